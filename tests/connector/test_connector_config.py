"""Settings -> connector configuration, and the DRAM-size guard, on a real VllmConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm.config import KVTransferConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from atom_tier.connector.config import (
    ConnectorConfigError,
    apply_extra_config,
    describe,
    resolve_chunk_tokens,
    secondary_tiers,
)
from atom_tier.connector.connector import hit_tokens_line
from atom_tier.preflight.checks_connector import check_dram_tier, evaluate_shm_room
from atom_tier.preflight.context import CheckContext
from atom_tier.preflight.findings import Level, registered_checks
from atom_tier.settings import load_settings
from atom_tier.sizing import (
    GIB,
    DramBudget,
    auto_dram_tier_bytes,
    dram_requirement,
    kv_bytes_per_token,
)
from atom_tier.tiers.host import probe_dram_budget
from tests.conftest import cpu_check_context

MAX_MODEL_LEN = 1024
# The tiny model: 2 layers x 2 KV heads x (K + V) x head_dim 32 x bf16.
TINY_KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 32 * 2


@pytest.fixture(scope="module")
def vllm_config(tiny_model_dir: Path) -> Any:
    args = EngineArgs(
        model=str(tiny_model_dir), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=12
    )
    return args.create_engine_config()


def with_connector(config: Any, name: str = "AtomTierConnector", **extra: Any) -> Any:
    config.kv_transfer_config = KVTransferConfig(
        kv_connector=name, kv_role="kv_both", kv_connector_extra_config=dict(extra)
    )
    return config


def context(config: Any, **env: str) -> CheckContext:
    return cpu_check_context(config, **env)


def test_settings_fill_the_extra_config(vllm_config: Any) -> None:
    with_connector(vllm_config)
    settings = load_settings(
        {"ATOM_TIER_DRAM_GB": "0.5", "ATOM_TIER_EVICTION": "arc", "ATOM_TIER_SAVE_DECODE": "1"}
    )
    extra = apply_extra_config(vllm_config, settings)
    assert extra["spec_name"] == "AtomTierOffloadingSpec"
    assert extra["spec_module_path"] == "atom_tier.connector.spec"
    assert extra["cpu_bytes_to_use"] == GIB // 2
    assert extra["eviction_policy"] == "arc"
    assert extra["offload_prompt_only"] is False
    assert extra["block_size"] == 256  # default chunk: 2 CPU blocks of 128 tokens
    assert "DRAM tier 512.00 MiB" in describe(extra)
    assert vllm_config.kv_transfer_config.kv_connector_extra_config is extra


def test_decode_kv_is_not_saved_by_default(vllm_config: Any) -> None:
    with_connector(vllm_config)
    extra = apply_extra_config(vllm_config, load_settings({"ATOM_TIER_DRAM_GB": "1"}))
    assert extra["offload_prompt_only"] is True


def test_operator_keys_win(vllm_config: Any) -> None:
    with_connector(vllm_config, cpu_bytes_to_use=12345678, blocks_per_chunk=4)
    extra = apply_extra_config(vllm_config, load_settings({"ATOM_TIER_DRAM_GB": "1"}))
    assert extra["cpu_bytes_to_use"] == 12345678
    assert extra["blocks_per_chunk"] == 4 and "block_size" not in extra


def test_chunk_size_must_be_whole_blocks() -> None:
    assert resolve_chunk_tokens(load_settings({"ATOM_TIER_CHUNK_TOKENS": "512"}), 128) == 512
    refused = r"ATOM_TIER_CHUNK_TOKENS=300 .* set ATOM_TIER_CHUNK_TOKENS=384 "
    with pytest.raises(ConnectorConfigError, match=refused):
        resolve_chunk_tokens(load_settings({"ATOM_TIER_CHUNK_TOKENS": "300"}), 128)
    # The default adapts to large-block models instead of failing.
    assert resolve_chunk_tokens(load_settings({}), 528) == 528


def test_refuses_settings_that_cannot_work(vllm_config: Any) -> None:
    with_connector(vllm_config)
    with pytest.raises(ConnectorConfigError, match="ATOM_TIER_CONNECTOR=off"):
        apply_extra_config(vllm_config, load_settings({"ATOM_TIER_CONNECTOR": "off"}))
    with pytest.raises(ConnectorConfigError, match=r"ATOM_TIER_DRAM_GB=0\.0 "):
        apply_extra_config(vllm_config, load_settings({"ATOM_TIER_DRAM_GB": "0"}))


def test_the_nvme_tier_entry_carries_path_cap_and_identity(tmp_path: Path) -> None:
    settings = load_settings({"ATOM_TIER_NVME_PATH": str(tmp_path), "ATOM_TIER_NVME_GB": "1.5"})
    identity = {"model": "/models/current", "numerics": "n"}
    assert secondary_tiers(settings, identity) == [
        {
            "type": "AtomTierNvmeTier",
            "module_path": "atom_tier.tiers.vllm_tier",
            "root_dir": str(tmp_path),
            "capacity_bytes": 3 * 2**29,
            "model_identity": identity,
        }
    ]
    assert secondary_tiers(load_settings({})) == []  # no NVMe path: no tier
    off = load_settings({"ATOM_TIER_NVME_PATH": str(tmp_path), "ATOM_TIER_NVME_GB": "0"})
    assert secondary_tiers(off) == []


def test_automatic_dram_size_rule() -> None:
    budget = DramBudget(memory_limit=100 * GIB, shm_size=1000 * GIB)
    assert auto_dram_tier_bytes(budget) == int(40 * GIB)
    assert auto_dram_tier_bytes(budget, device_share=0.25) == int(10 * GIB)
    # A small /dev/shm (Docker's default is 64 MiB) caps it: the region lives there.
    assert auto_dram_tier_bytes(DramBudget(100 * GIB, 64 * 1024**2)) == 32 * 1024**2
    assert auto_dram_tier_bytes(DramBudget(None, None)) == 0


def test_requirement_arithmetic() -> None:
    base = dict(max_model_len=1000, kv_bytes_per_token=10, max_num_seqs=8, chunk_tokens=256)
    assert dram_requirement(**base).minimum_bytes == 1024 * 10  # one prefix, in whole chunks
    # The device holds 3 full-length prefixes: 3 reloads can be in flight.
    assert dram_requirement(**base, device_kv_tokens=3 * 1024 + 5).concurrency == 3
    assert dram_requirement(**base, device_kv_tokens=100 * 1024).concurrency == 8
    assert dram_requirement(**base, device_kv_tokens=10, reload_concurrency=5).concurrency == 5


def test_kv_bytes_per_token_from_the_model(vllm_config: Any) -> None:
    assert kv_bytes_per_token(vllm_config) == TINY_KV_BYTES_PER_TOKEN


def test_guard_is_registered_and_silent_without_the_connector(vllm_config: Any) -> None:
    assert "connector-dram-tier" in {c.name for c in registered_checks()}
    with_connector(vllm_config, name="OffloadingConnector")
    assert list(check_dram_tier(context(vllm_config, ATOM_TIER_DRAM_GB="1"))) == []
    assert list(check_dram_tier(context(None))) == []


def test_guard_passes_when_dram_holds_the_prefixes(vllm_config: Any) -> None:
    with_connector(vllm_config)
    [finding] = check_dram_tier(context(vllm_config, ATOM_TIER_DRAM_GB="1"))
    assert finding.level is Level.OK, finding


def test_guard_fails_with_the_minimum_and_the_fix(vllm_config: Any, tmp_path: Path) -> None:
    with_connector(vllm_config)
    # 12 device blocks of 128 tokens hold one 1024-token prefix: 1024 x 512 B = 512 KiB.
    minimum = MAX_MODEL_LEN * TINY_KV_BYTES_PER_TOKEN
    env = {"ATOM_TIER_DRAM_GB": "0.0001", "ATOM_TIER_NVME_PATH": str(tmp_path)}
    [finding] = check_dram_tier(context(vllm_config, **env))
    assert finding.level is Level.ERROR
    assert finding.code == "dram-tier-too-small"
    assert f"= {minimum // 1024}.00 KiB" in finding.message
    # The 512 KiB minimum as the value to type (rounded up) and the size it gives.
    assert "set ATOM_TIER_DRAM_GB to 0.000489 (512.75 KiB) or more" in finding.fix
    # Without an NVMe tier a small DRAM tier only costs hits: a warning.
    [finding] = check_dram_tier(context(vllm_config, ATOM_TIER_DRAM_GB="0.0001"))
    assert finding.level is Level.WARNING
    # Knowing fewer reloads happen at once, the operator can say so.
    env["ATOM_TIER_RELOAD_CONCURRENCY"] = "1"
    env["ATOM_TIER_DRAM_GB"] = str(minimum / GIB)
    [finding] = check_dram_tier(context(vllm_config, **env))
    assert finding.level is Level.OK


def test_guard_refuses_a_missing_dram_tier(vllm_config: Any) -> None:
    with_connector(vllm_config)
    [finding] = check_dram_tier(context(vllm_config, ATOM_TIER_DRAM_ENABLED="false"))
    assert (finding.level, finding.code) == (Level.ERROR, "dram-tier-off")


def test_hit_tokens_line_reads_like_lmcaches() -> None:
    line = hit_tokens_line("cmpl-1", 600, 128, {CacheHitSource.HOST: 256, CacheHitSource.DISK: 128})
    assert line == (
        "Reqid: cmpl-1, Total tokens 600, Inference Engine computed tokens: 128, "
        "atom-tier hit tokens: 384 (dram 256, nvme 128), need to load: 384"
    )
    assert "hit tokens: 0 (dram 0, nvme 0)" in hit_tokens_line("r", 5, 0, {})


def test_shm_room_rule() -> None:
    # Docker's default /dev/shm (64 MiB) cannot hold a 1 GiB tier; the fix names --shm-size.
    docker = DramBudget(100 * GIB, shm_size=64 * 1024**2, shm_free=60 * 1024**2)
    finding = evaluate_shm_room(1 * GIB, docker)
    assert finding is not None
    assert (finding.level, finding.code) == (Level.ERROR, "dram-tier-exceeds-shm")
    assert "1.00 GiB" in finding.message and "60.00 MiB free" in finding.message
    assert "--shm-size=2g" in finding.fix and "ATOM_TIER_DRAM_GB" in finding.fix
    assert evaluate_shm_room(50 * 1024**2, docker) is None
    assert evaluate_shm_room(1 * GIB, DramBudget(None, None)) is None  # /dev/shm unreadable


def test_guard_measures_the_real_dev_shm(vllm_config: Any) -> None:
    """The check reads this machine's /dev/shm: a tier larger than its free space fails."""
    with_connector(vllm_config)
    free = probe_dram_budget().shm_free
    assert free is not None
    too_big = str(round(free / GIB + 1, 2))
    findings = list(check_dram_tier(context(vllm_config, ATOM_TIER_DRAM_GB=too_big)))
    assert [f.code for f in findings] == ["dram-tier-size", "dram-tier-exceeds-shm"]
    fits = str(round(min(free / 2, GIB) / GIB, 3))
    findings = list(check_dram_tier(context(vllm_config, ATOM_TIER_DRAM_GB=fits)))
    assert "dram-tier-exceeds-shm" not in [f.code for f in findings]
