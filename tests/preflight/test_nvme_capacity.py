"""Preflight's capacity findings against real small filesystems, and the store agreeing."""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from vllm.config import KVTransferConfig
from vllm.engine.arg_utils import EngineArgs

from atom_tier.preflight import CheckContext, run_preflight
from atom_tier.preflight.findings import Finding, Level
from atom_tier.preflight.probes import gather_facts
from atom_tier.settings import load_foreign_env, load_settings
from tests.tiers.conftest import StoreFactory

GIB = 2**30
KIB = 1024
MAX_MODEL_LEN = 1024  # the tiny model: 512 KV bytes per token, so one prefix is 512 KiB


def capacity_findings(path: Path, vllm_config: Any = None, **env: str) -> list[Finding]:
    settings = load_settings({"ATOM_TIER_NVME_PATH": str(path), **env})
    ctx = CheckContext(settings, load_foreign_env({}), gather_facts(settings, shm=False))
    ctx.vllm_config = vllm_config
    return [f for f in run_preflight(ctx) if f.code in ("nvme-capacity", "nvme-auto-capacity")]


def test_automatic_cap_of_zero_warns_and_the_store_rejects_every_chunk(
    mount_tmpfs: Any, make_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """8 MiB filesystem: all of it is reserve. Preflight and the store use one arithmetic."""
    root = mount_tmpfs("8M")
    [found] = capacity_findings(root)
    assert (found.level, found.code) == (Level.WARNING, "nvme-auto-capacity")
    assert f"automatic NVMe cap on {root} is 0 B" in found.message
    assert "reject every chunk" in found.message
    assert re.search(r"ATOM_TIER_NVME_GB to at most 0\.00\d+ \(\d\.\d\d MiB\)", found.fix)
    with caplog.at_level(logging.INFO, logger="vllm.atom_tier"):
        store = make_store(root, None)
    assert store.index.capacity_bytes == 0
    assert store.write(b"k", b"x" * 4096).rejected == 1
    [line] = [r for r in caplog.records if "NVMe tier at" in r.getMessage()]
    assert line.levelno == logging.WARNING and "cap 0 B (every chunk will be rejected" in (
        line.getMessage()
    )


def test_explicit_cap_fix_names_a_value_the_filesystem_takes(
    mount_tmpfs: Any, make_store: StoreFactory
) -> None:
    """ATOM_TIER_NVME_GB=1 on 8 MiB: the fix's value, typed as shown, fits and stores."""
    root = mount_tmpfs("8M")
    [found] = capacity_findings(root, ATOM_TIER_NVME_GB="1")
    assert found.level is Level.ERROR
    match = re.search(r"ATOM_TIER_NVME_GB to at most ([0-9.]+) \(([0-9.]+) MiB\)", found.fix)
    assert match is not None, found.fix
    typed = int(Decimal(match.group(1)) * GIB)
    assert 7.9 * 2**20 <= typed <= 8 * 2**20
    [again] = capacity_findings(root, ATOM_TIER_NVME_GB=match.group(1))
    assert again.level is Level.OK
    store = make_store(root, typed)
    assert store.write(b"k", b"x" * 2**20).written == 1


@pytest.fixture
def tiny_config(tiny_model_dir: Path) -> Any:
    config = EngineArgs(
        model=str(tiny_model_dir), max_model_len=MAX_MODEL_LEN
    ).create_engine_config()
    config.kv_transfer_config = KVTransferConfig(
        kv_connector="AtomTierConnector", kv_role="kv_both"
    )
    return config


@pytest.mark.parametrize(
    ("beyond_reserve", "level"), [(256 * KIB, Level.WARNING), (GIB // 1024, Level.OK)]
)
def test_automatic_cap_below_one_full_length_prefix_warns_at_start_up(
    mount_tmpfs: Any, tiny_config: Any, beyond_reserve: int, level: Level
) -> None:
    """A filesystem of 4 GiB + a little: the 4 GiB reserve leaves the tier that little, less
    (256 KiB) or more (1 MiB) than one 1024-token prefix of 512 KiB."""
    root = mount_tmpfs(str(4 * GIB + beyond_reserve))
    [found] = capacity_findings(root, tiny_config)
    assert (found.level, found.code) == (level, "nvme-auto-capacity")
    prefix = "one full-length prefix (1024 tokens, max-model-len in whole chunks, x 512 KV bytes"
    assert prefix in found.message
    if level is Level.WARNING:
        assert "is 256.00 KiB" in found.message and "evicts on nearly every write" in found.message
        assert "set ATOM_TIER_NVME_GB to at most 4" in found.fix
    else:
        assert "NVMe cap sized automatically: 1.00 MiB" in found.message
