"""Byte sizes for people, and the ``*_GB`` values an operator types.

One helper for every size a finding or a tier log line prints. Sizes show in the unit that
shows the number (GiB from 1 GiB up, MiB below, KiB below that), and a value to type comes
with the size it means: "at most 0" (an integer GiB count on an 8 MiB filesystem) or "at most
0.0068" told an operator nothing. No imports from the rest of atom-tier beyond the GiB unit,
so every layer (tiers included) can use it.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from atom_tier.settings import GIB

_UNITS = (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024))
# A typed value keeps this many significant digits: enough to land within 1 % of the size
# meant, few enough to type.
_SIGNIFICANT = 3


def human_size(n_bytes: float) -> str:
    """'23.25 GiB', '5.81 MiB', '512.00 KiB', '100 B': the largest unit the size reaches."""
    for unit, scale in _UNITS:
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{int(n_bytes)} B"


def gb_value(n_bytes: float, *, up: bool = False) -> str:
    """``n_bytes`` as a ``*_GB`` setting (GiB), 3 significant digits at most, never above
    ``n_bytes`` (never below with ``up``): a limit typed as shown still holds."""
    if n_bytes <= 0:
        return "0"
    exact = Decimal(int(n_bytes)) / Decimal(GIB)
    # Whole GiB are precise enough from 1000 GiB up; below, keep 3 significant digits.
    exponent = min(0, exact.adjusted() - (_SIGNIFICANT - 1))
    rounded = exact.quantize(Decimal(1).scaleb(exponent), ROUND_CEILING if up else ROUND_FLOOR)
    return format(rounded.normalize(), "f")


def gb_setting(n_bytes: float, *, up: bool = False) -> str:
    """'0.00567 (5.81 MiB)': the ``*_GB`` value to type (see :func:`gb_value`) and the size
    it gives."""
    value = gb_value(n_bytes, up=up)
    return f"{value} ({human_size(int(Decimal(value) * GIB))})"
