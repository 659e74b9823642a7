"""The kv_transfer_config for vLLM's LMCacheConnectorV1, on real VllmConfig objects (CPU vLLM)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lmcache_helpers import settings_of

from atom_tier.lmcache.config import GIB, LMCacheConfigError
from atom_tier.lmcache.kv_transfer import (
    hash_algorithm,
    lmcache_kv_transfer_config,
    local_workers,
    probe_host_share,
    resolve_lmcache_config,
)
from atom_tier.names import LMCACHE_CONNECTOR

BuildConfig = Callable[..., Any]


@pytest.fixture(scope="module")
def build_config(tiny_model_dir: Path) -> BuildConfig:
    """A real VllmConfig for the tiny model, through vLLM's EngineArgs."""
    from vllm.engine.arg_utils import EngineArgs

    def build(**engine_args: Any) -> Any:
        engine_args.setdefault("max_model_len", 512)
        return EngineArgs(model=str(tiny_model_dir), **engine_args).create_engine_config()

    return build


def test_selects_vllms_lmcache_connector_with_lmcache_keys() -> None:
    transfer = lmcache_kv_transfer_config(
        settings_of(ATOM_TIER_DRAM_GB=4, ATOM_TIER_CHUNK_TOKENS=128)
    )
    assert transfer["kv_connector"] == LMCACHE_CONNECTOR == "LMCacheConnectorV1"
    assert transfer["kv_role"] == "kv_both"
    extra = transfer["kv_connector_extra_config"]
    assert extra["lmcache.chunk_size"] == 128
    assert extra["lmcache.max_local_cpu_size"] == 4.0
    assert extra["lmcache.save_decode_cache"] is False
    assert "use_native" not in extra  # LMCache's own adapter, which applies these keys


def test_vllm_accepts_it_and_resolves_the_class(build_config: BuildConfig) -> None:
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    transfer = lmcache_kv_transfer_config(settings_of(ATOM_TIER_DRAM_GB=2))
    config = build_config(kv_transfer_config=transfer)
    assert config.kv_transfer_config.kv_connector == LMCACHE_CONNECTOR
    assert (
        config.kv_transfer_config.kv_connector_extra_config == transfer["kv_connector_extra_config"]
    )
    assert KVConnectorFactory.get_connector_class(config.kv_transfer_config).__name__ == (
        LMCACHE_CONNECTOR
    )


def test_sizes_split_over_tensor_parallel_workers(
    build_config: BuildConfig, tmp_path: Path
) -> None:
    config = build_config(tensor_parallel_size=2)
    assert local_workers(config) == 2
    settings = settings_of(ATOM_TIER_DRAM_GB=16, ATOM_TIER_NVME_PATH=tmp_path, ATOM_TIER_NVME_GB=50)
    extra = lmcache_kv_transfer_config(settings, config)["kv_connector_extra_config"]
    assert extra["lmcache.max_local_cpu_size"] == 8.0
    assert extra["lmcache.max_local_disk_size"] == 25.0
    assert extra["lmcache.local_disk"] == str(tmp_path)


def test_chunk_hash_follows_vllms_prefix_cache_hash(build_config: BuildConfig) -> None:
    config = build_config(prefix_caching_hash_algo="sha256_cbor")
    assert hash_algorithm(config) == "sha256_cbor"
    extra = lmcache_kv_transfer_config(settings_of(ATOM_TIER_DRAM_GB=1), config)[
        "kv_connector_extra_config"
    ]
    assert extra["lmcache.pre_caching_hash_algorithm"] == "sha256_cbor"
    assert hash_algorithm(None) == "sha256"  # vLLM's default, before a VllmConfig exists


def test_host_share_probes_memory_and_disk(tmp_path: Path) -> None:
    share = probe_host_share(settings_of(ATOM_TIER_NVME_PATH=tmp_path))
    assert share.workers == 1
    assert share.auto_cpu_bytes is not None and share.auto_cpu_bytes > 0
    assert share.auto_disk_bytes is None or share.auto_disk_bytes > 0
    explicit = probe_host_share(settings_of(ATOM_TIER_DRAM_GB=3, ATOM_TIER_NVME_GB=2))
    assert explicit.auto_cpu_bytes is None and explicit.auto_disk_bytes is None


def test_automatic_dram_size_is_a_share_of_host_memory() -> None:
    """40% of the memory limit per GPU of the node (no GPU here: one)."""
    from atom_tier.tiers.host import probe_dram_budget

    limit = probe_dram_budget().memory_limit
    assert limit is not None
    config = resolve_lmcache_config(settings_of())
    assert 0 < config.max_local_cpu_size * GIB <= 0.4 * limit


def test_missing_disk_directory_without_a_cap_is_an_error(tmp_path: Path) -> None:
    settings = settings_of(ATOM_TIER_DRAM_GB=1, ATOM_TIER_NVME_PATH=tmp_path / "absent")
    with pytest.raises(LMCacheConfigError, match="ATOM_TIER_NVME_GB"):
        lmcache_kv_transfer_config(settings)
