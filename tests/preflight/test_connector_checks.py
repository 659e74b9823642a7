"""The connector's settings checked when the VllmConfig is built, before any weights load.

Real VllmConfigs on this CPU machine (vLLM's own CPU platform resolves the block size); the
check is the one preflight runs inside ``check_and_update_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm.config import KVTransferConfig
from vllm.config.cache import CacheConfig
from vllm.engine.arg_utils import EngineArgs

from atom_tier.preflight.checks_connector import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_BLOCK_SIZES,
    check_connector_settings,
)
from atom_tier.preflight.findings import Finding, Level
from tests.conftest import cpu_check_context


def build(tiny_model_dir: Path, connector: str = "AtomTierConnector", **args: Any) -> Any:
    config = EngineArgs(
        model=str(tiny_model_dir), max_model_len=1024, **args
    ).create_engine_config()
    config.kv_transfer_config = KVTransferConfig(kv_connector=connector, kv_role="kv_both")
    return config


@pytest.fixture(scope="module")
def default_config(tiny_model_dir: Path) -> Any:
    return build(tiny_model_dir)


@pytest.fixture(scope="module")
def block_64_config(tiny_model_dir: Path) -> Any:
    return build(tiny_model_dir, block_size=64)


def check(config: Any, **env: str) -> list[Finding]:
    return list(check_connector_settings(cpu_check_context(config, **env)))


def test_doctors_default_block_sizes_are_vllms(default_config: Any) -> None:
    """doctor has no VllmConfig and assumes vLLM's defaults: they must be vLLM's."""
    assert CacheConfig.DEFAULT_BLOCK_SIZE == DEFAULT_BLOCK_SIZE
    assert default_config.cache_config.block_size == DEFAULT_BLOCK_SIZES["cpu"]


def test_chunk_tokens_are_checked_against_this_configs_block_size(
    default_config: Any, block_64_config: Any
) -> None:
    assert block_64_config.cache_config.block_size == 64
    [fits] = check(block_64_config, ATOM_TIER_CHUNK_TOKENS="64")
    assert fits.level is Level.OK and "64 tokens (this server's block size)" in fits.message
    [refused] = check(default_config, ATOM_TIER_CHUNK_TOKENS="64")
    assert (refused.level, refused.code) == (Level.ERROR, "chunk-tokens")
    assert "ATOM_TIER_CHUNK_TOKENS=64 is not a multiple" in refused.message
    assert "128 tokens (this server's block size)" in refused.message
    assert refused.fix.startswith("set ATOM_TIER_CHUNK_TOKENS=128 ")
    [hundred] = check(default_config, ATOM_TIER_CHUNK_TOKENS="100")
    assert hundred.level is Level.ERROR and "ATOM_TIER_CHUNK_TOKENS=100 " in hundred.message


def test_default_chunk_is_rounded_up_not_refused(tiny_model_dir: Path) -> None:
    [rounded] = check(build(tiny_model_dir, block_size=96))
    assert rounded.level is Level.OK and "rounded up to 288" in rounded.message


def test_operator_chunk_keys_win(tiny_model_dir: Path) -> None:
    config = build(tiny_model_dir)
    config.kv_transfer_config.kv_connector_extra_config["blocks_per_chunk"] = 2
    assert check(config, ATOM_TIER_CHUNK_TOKENS="100") == []


def test_connector_named_but_another_engine_asked(default_config: Any) -> None:
    [mismatch] = check(default_config, ATOM_TIER_CONNECTOR="off")
    assert (mismatch.level, mismatch.code) == (Level.ERROR, "connector-engine")
    assert "ATOM_TIER_CONNECTOR=off" in mismatch.message
    assert "ATOM_TIER_CONNECTOR=native" in mismatch.fix


def test_silent_without_atom_tier_connector(tiny_model_dir: Path) -> None:
    other = build(tiny_model_dir, connector="OffloadingConnector")
    assert check(other, ATOM_TIER_CHUNK_TOKENS="100", ATOM_TIER_CONNECTOR="off") == []
