"""The start-up feature block and the preflight step, on real VllmConfigs (platform doubles)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from atom_tier.policy.feature_report import FEATURES, render_block
from atom_tier.preflight import PreflightError
from atom_tier.preflight import findings as preflight_findings
from atom_tier.preflight.findings import Check, Finding, Level
from tests.policy.conftest import CPU_FACTS, ROCM_FACTS, BuildConfig, RecordList


def test_block_lists_every_feature_once_with_a_reason(build_config: BuildConfig) -> None:
    for facts in (ROCM_FACTS, CPU_FACTS):
        statuses = build_config(facts=facts).statuses
        assert [s.name for s in statuses] == list(FEATURES)
        assert all(s.detail for s in statuses)


def test_block_is_logged_once_as_one_record(
    build_config: BuildConfig, atom_tier_log: RecordList
) -> None:
    # A distinct configuration, so the block differs from any logged before in this process.
    built = build_config(env={"ATOM_TIER_CONNECTOR": "lmcache"}, max_num_seqs=24)
    records = [m for m in atom_tier_log.messages() if "features (platform rocm, gfx942)" in m]
    assert len(records) == 1
    text = records[0]
    assert text == render_block(built.statuses, ROCM_FACTS)
    assert "[on ] cuda_graphs" in text and "[off] fused_qk_norm_rope_kvcache" in text
    assert len(text.splitlines()) == 1 + len(FEATURES)


def test_each_change_is_logged(build_config: BuildConfig, atom_tier_log: RecordList) -> None:
    build_config(enforce_eager=True)
    messages = atom_tier_log.messages()
    assert "atom-tier set model_config.enforce_eager = False" in messages
    assert "atom-tier set compilation_config.cudagraph_mode = FULL_AND_PIECEWISE" in messages
    assert "atom-tier set cache_config.cache_dtype = 'fp8'" in messages


def test_preflight_error_stops_start_up_with_the_fix_after_the_block(
    build_config: BuildConfig,
    monkeypatch: pytest.MonkeyPatch,
    atom_tier_log: RecordList,
) -> None:
    """A check that reads the VllmConfig and reports an error stops VllmConfig creation."""

    def fp8_refused(ctx):  # type: ignore[no-untyped-def]
        if ctx.vllm_config is not None and ctx.vllm_config.cache_config.cache_dtype == "fp8":
            yield Finding(Level.ERROR, "test-fp8", "fp8 KV refused by this test", "use bf16")

    monkeypatch.setitem(
        preflight_findings._REGISTRY, "test-fp8", Check("test-fp8", "test", fp8_refused)
    )
    with pytest.raises(PreflightError) as failed:
        build_config(max_num_seqs=40)
    assert "[test-fp8] fp8 KV refused by this test" in str(failed.value)
    assert "fix: use bf16" in str(failed.value)
    block = [m for m in atom_tier_log.messages() if "features (platform" in m]
    assert block and "[off] preflight" in block[-1] and "(test-fp8" in block[-1]
    # With the opt-out the same check passes: the error really came from the fp8 decision.
    assert build_config(env={"ATOM_TIER_KV_CACHE_DTYPE": "auto"}).status("preflight").active


def test_engine_core_rerun_of_post_init_changes_and_logs_nothing(
    build_config: BuildConfig, atom_tier_log: RecordList
) -> None:
    """vLLM's engine core runs __post_init__ again on the config it received; atom-tier
    recognises its own record in additional_config and leaves the config as it was."""
    config = build_config(enforce_eager=True, max_num_seqs=56).config
    recorded = config.additional_config["atom_tier"]["decisions"]
    assert ["cuda_graphs", True] == recorded[0][:2]

    def state() -> tuple:  # type: ignore[type-arg]
        cc = config.compilation_config
        kv = config.kv_transfer_config
        return (
            cc.mode, cc.cudagraph_mode, list(cc.cudagraph_capture_sizes),
            config.cache_config.cache_dtype, kv.kv_connector, kv.engine_id,
        )  # fmt: skip

    before, logged = state(), len(atom_tier_log.records)
    config.__post_init__()
    assert state() == before
    assert atom_tier_log.messages()[logged:] == []


# vLLM's prefix-cache seed as a fresh interpreter computes it (the engine core and every worker
# are such interpreters), next to that interpreter's own hash() of a string.
NONE_HASH_PROBE = (
    "from vllm.utils.hashing import get_hash_fn_by_name\n"
    "from vllm.v1.core import kv_cache_utils as k\n"
    "k.init_none_hash(get_hash_fn_by_name('sha256'))\n"
    "print(bytes(k.NONE_HASH).hex(), hash('atom-tier'))\n"
)


def _none_hash_in_fresh_process(seed: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", NONE_HASH_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[-2], out[-1]


def test_pythonhashseed_random_gives_vllm_the_same_prefix_hashes_and_starts(
    build_config: BuildConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM 0.32 seeds its prefix hashes with the variable's string: "random" is as stable as 0
    across processes (only Python's hash() differs), so start-up must not be refused."""
    first, second = (_none_hash_in_fresh_process("random") for _ in range(2))
    assert first[0] == second[0]  # vLLM's NONE_HASH: identical in both processes
    assert first[1] != second[1]  # Python's hash(): randomized, as "random" says
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    built = build_config(max_num_seqs=44)  # a PreflightError here would stop vLLM's start
    status = built.status("hash_seed")
    assert status.active and "PYTHONHASHSEED='random'" in status.detail
