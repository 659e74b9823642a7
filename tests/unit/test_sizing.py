"""Sizes for people and *_GB values to type: expected strings written out by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest

from atom_tier.sizing import gb_setting, gb_value, human_size

GIB = 2**30
MIB = 2**20


@pytest.mark.parametrize(
    ("n_bytes", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (512 * 1024, "512.00 KiB"),
        (6_094_848, "5.81 MiB"),
        (GIB - 1, "1024.00 MiB"),
        (GIB, "1.00 GiB"),
        (int(23.25 * GIB), "23.25 GiB"),
    ],
)
def test_human_size_uses_the_unit_that_shows_the_number(n_bytes: int, shown: str) -> None:
    assert human_size(n_bytes) == shown


@pytest.mark.parametrize(
    ("n_bytes", "down", "up"),
    [
        (0, "0", "0"),
        (8 * MIB, "0.00781", "0.00782"),  # 0.0078125 GiB
        (6_094_848, "0.00567", "0.00568"),
        (16 * GIB, "16", "16"),
        (int(23.25 * GIB), "23.2", "23.3"),
        (1234 * GIB + GIB // 2, "1234", "1235"),
    ],
)
def test_gb_value_rounds_towards_the_safe_side(n_bytes: int, down: str, up: str) -> None:
    assert gb_value(n_bytes) == down
    assert gb_value(n_bytes, up=True) == up
    # A limit typed as shown still holds: never above (below with up) the size meant.
    assert Decimal(down) * GIB <= n_bytes <= Decimal(up) * GIB


def test_gb_setting_shows_the_value_and_the_size_it_gives() -> None:
    assert gb_setting(8 * MIB) == "0.00781 (8.00 MiB)"
    assert gb_setting(512 * 1024, up=True) == "0.000489 (512.75 KiB)"
    assert gb_setting(10 * GIB) == "10 (10.00 GiB)"
