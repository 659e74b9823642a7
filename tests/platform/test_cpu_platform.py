"""AtomTierCpuPlatform: the opt-in CPU development platform, with nothing faked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import vllm.platforms
from vllm.config.compilation import CUDAGraphMode
from vllm.engine.arg_utils import EngineArgs

from atom_tier.platform.selection import CPU_PLATFORM


@pytest.fixture
def cpu_platform(monkeypatch: pytest.MonkeyPatch) -> Any:
    from atom_tier.platform.cpu import AtomTierCpuPlatform

    platform = AtomTierCpuPlatform()
    monkeypatch.setattr(vllm.platforms, "_current_platform", platform)
    return platform


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ATOM_TIER_CPU_PLATFORM": "1"}, CPU_PLATFORM),
        ({}, "vllm.platforms.cpu.CpuPlatform"),
        (
            {"ATOM_TIER_CPU_PLATFORM": "1", "ATOM_TIER_DISABLE": "1"},
            "vllm.platforms.cpu.CpuPlatform",
        ),
        # vLLM skips out-of-tree platform plugins when the CPU target is named explicitly.
        (
            {"ATOM_TIER_CPU_PLATFORM": "1", "VLLM_TARGET_DEVICE": "cpu"},
            "vllm.platforms.cpu.CpuPlatform",
        ),
    ],
)
def test_vllm_resolution_through_the_entry_point(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name in ("ATOM_TIER_CPU_PLATFORM", "ATOM_TIER_DISABLE", "VLLM_TARGET_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert vllm.platforms.resolve_current_platform_cls_qualname() == expected


# Resolve vLLM's platform, then list vLLM modules whose `current_platform` is another object:
# they bound it during a nested resolution started by something the plugin imported.
RESOLVE_AND_CHECK = """
import sys
import vllm.platforms as platforms
current = platforms.current_platform
import vllm.config, vllm.engine.arg_utils
stale = sorted(
    name for name, module in list(sys.modules.items())
    if name.startswith("vllm.") and name != "vllm.platforms"
    and getattr(module, "current_platform", current) is not current
)
print(type(current).__name__, stale)
"""


def test_resolving_in_a_fresh_process_does_not_recurse(tmp_path: Path) -> None:
    """The plugin runs while vLLM resolves its platform: nothing it imports may resolve it again
    (importing vllm.config does), or vLLM modules would keep the builtin CPU platform."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ATOM_TIER_CPU_PLATFORM": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE_AND_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "AtomTierCpuPlatform []"


def test_real_config_gets_connector_fp8_and_the_feature_block(
    cpu_platform: Any, tiny_model_dir: Path
) -> None:
    config = EngineArgs(model=str(tiny_model_dir)).create_engine_config()
    facts = cpu_platform.atom_tier_facts()
    assert not facts.static_graphs and facts.name == "cpu"
    assert config.kv_transfer_config.kv_connector == "AtomTierConnector"
    assert config.kv_transfer_config.kv_role == "kv_both"
    # fp8 KV exactly where vLLM's CPU attention can store it (x86 with AVX-512 or AMX).
    assert config.cache_config.cache_dtype == ("fp8" if facts.fp8_kv else "auto")
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
    assert config.cache_config.enable_prefix_caching


def test_explicit_kv_transfer_config_is_kept(cpu_platform: Any, tiny_model_dir: Path) -> None:
    given = {"kv_connector": "OffloadingConnector", "kv_role": "kv_both"}
    config = EngineArgs(model=str(tiny_model_dir), kv_transfer_config=given).create_engine_config()
    assert config.kv_transfer_config.kv_connector == "OffloadingConnector"


def test_settings_error_in_the_config_hook_ends_start_up_with_one_block(
    cpu_platform: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk size is refused while vLLM builds the config (before any weights load), as
    SystemExit carrying the block: vLLM's start path lets it through, without a traceback."""
    monkeypatch.setenv("ATOM_TIER_CHUNK_TOKENS", "100")
    with pytest.raises(SystemExit) as stopped:
        EngineArgs(model=str(tiny_model_dir), max_num_seqs=9).create_engine_config()
    block = str(stopped.value.code).splitlines()
    assert block[0] == "atom-tier: vLLM not started: preflight found 1 error"
    assert block[1].startswith("- [chunk-tokens] ATOM_TIER_CHUNK_TOKENS=100 is not a multiple")
    assert "128 tokens (this server's block size)" in block[1]
    assert block[2].startswith("  fix: set ATOM_TIER_CHUNK_TOKENS=128 ")


def test_lmcache_engine_without_a_tier_ends_start_up_with_one_block(
    cpu_platform: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused while the policy plans the connector (apply_config_platform_defaults)."""
    monkeypatch.setenv("ATOM_TIER_CONNECTOR", "lmcache")
    monkeypatch.setenv("ATOM_TIER_DRAM_GB", "0")
    monkeypatch.delenv("ATOM_TIER_NVME_PATH", raising=False)
    with pytest.raises(SystemExit) as stopped:
        EngineArgs(model=str(tiny_model_dir), max_num_seqs=11).create_engine_config()
    block = str(stopped.value.code).splitlines()
    assert block[0] == "atom-tier: vLLM not started: the lmcache engine cannot be configured"
    assert block[1].startswith("- the lmcache engine has no tier to keep KV in")
    assert "ATOM_TIER_DRAM_GB=0.0" in block[1]
    assert block[2] == "  fix: give ATOM_TIER_DRAM_GB or ATOM_TIER_NVME_PATH a size, or set " + (
        "ATOM_TIER_CONNECTOR=off"
    )
