"""CUDA graph policy on real VllmConfig objects (platform double: static graphs = yes).

vLLM on CPU has no static graphs, so the one GPU-only fact — `support_static_graph_mode()` —
comes from the platform double in conftest.py; enforce-eager handling, optimization-level
defaults and capture-size computation are vLLM's own code, run for real.
"""

from __future__ import annotations

import pytest
from vllm.config.compilation import CompilationMode, CUDAGraphMode

from tests.policy.conftest import CPU_FACTS, BuildConfig

FAP = CUDAGraphMode.FULL_AND_PIECEWISE


def graph_state(config) -> tuple:  # type: ignore[no-untyped-def]
    cc = config.compilation_config
    return (
        cc.mode,
        cc.cudagraph_mode,
        list(cc.cudagraph_capture_sizes),
        cc.max_cudagraph_capture_size,
        config.model_config.enforce_eager,
    )


def test_default_resolves_to_full_and_piecewise_with_capture_sizes(
    build_config: BuildConfig,
) -> None:
    built = build_config()
    mode, graphs, sizes, largest, eager = graph_state(built.config)
    assert (mode, graphs, eager) == (CompilationMode.VLLM_COMPILE, FAP, False)
    # vLLM's default grid for max_num_seqs=128 here: 1, 2, 4, then steps of 8 up to 256.
    assert sizes[:4] == [1, 2, 4, 8] and largest == 256 == sizes[-1]
    assert built.status("cuda_graphs").active


@pytest.mark.parametrize("max_num_seqs", [None, 8])
def test_enforce_eager_is_overridden_with_the_same_capture_sizes_as_a_graph_run(
    build_config: BuildConfig, max_num_seqs: int | None
) -> None:
    extra = {} if max_num_seqs is None else {"max_num_seqs": max_num_seqs}
    baseline = build_config(env={"ATOM_TIER_DISABLE": "0"}, **extra)
    eager = build_config(enforce_eager=True, **extra)
    assert graph_state(eager.config) == graph_state(baseline.config)
    _, graphs, sizes, largest, _ = graph_state(eager.config)
    assert graphs == FAP and sizes and largest == sizes[-1]
    assert eager.config.kernel_config.enable_jit_warmup is True  # eager had turned it off
    decision = eager.decision("cuda_graphs")
    assert decision.active and "--enforce-eager overridden" in decision.reason


def test_stock_vllm_keeps_eager_when_atom_tier_is_disabled(build_config: BuildConfig) -> None:
    built = build_config(env={"ATOM_TIER_DISABLE": "1"}, enforce_eager=True)
    mode, graphs, sizes, largest, eager = graph_state(built.config)
    assert (mode, graphs, sizes, largest, eager) == (
        CompilationMode.NONE, CUDAGraphMode.NONE, [], 0, True
    )  # fmt: skip
    assert built.decisions == [] and built.statuses == []


def test_escape_hatch_keeps_enforce_eager(build_config: BuildConfig) -> None:
    built = build_config(env={"ATOM_TIER_ALLOW_EAGER": "1"}, enforce_eager=True)
    _, graphs, sizes, largest, eager = graph_state(built.config)
    assert (graphs, sizes, largest, eager) == (CUDAGraphMode.NONE, [], 0, True)
    status = built.status("cuda_graphs")
    assert not status.active and "ATOM_TIER_ALLOW_EAGER=1" in status.detail


def test_escape_hatch_does_not_stop_forcing_when_eager_was_not_asked(
    build_config: BuildConfig,
) -> None:
    built = build_config(env={"ATOM_TIER_ALLOW_EAGER": "1"}, optimization_level=1)
    assert built.config.compilation_config.cudagraph_mode == FAP


@pytest.mark.parametrize(("level", "left"), [(0, "NONE"), (1, "PIECEWISE")])
def test_optimization_levels_that_leave_eager_or_piecewise_are_forced(
    build_config: BuildConfig, level: int, left: str
) -> None:
    stock = build_config(env={"ATOM_TIER_DISABLE": "1"}, optimization_level=level)
    assert stock.config.compilation_config.cudagraph_mode.name == left
    built = build_config(optimization_level=level)
    mode, graphs, sizes, _, _ = graph_state(built.config)
    assert (mode, graphs) == (CompilationMode.VLLM_COMPILE, FAP)
    assert sizes == list(build_config().config.compilation_config.cudagraph_capture_sizes)
    assert f"O{level} would leave {left}" in built.decision("cuda_graphs").reason


def test_explicit_cudagraph_none_counts_as_eager(build_config: BuildConfig) -> None:
    built = build_config(compilation_config={"cudagraph_mode": "NONE"})
    assert built.config.compilation_config.cudagraph_mode == FAP
    hatch = build_config(
        env={"ATOM_TIER_ALLOW_EAGER": "1"}, compilation_config={"cudagraph_mode": "NONE"}
    )
    assert hatch.config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE


def test_explicit_graph_mode_other_than_none_is_kept(build_config: BuildConfig) -> None:
    built = build_config(compilation_config={"cudagraph_mode": "PIECEWISE"})
    assert built.config.compilation_config.cudagraph_mode == CUDAGraphMode.PIECEWISE
    status = built.status("cuda_graphs")
    assert status.active and "cudagraph_mode=PIECEWISE set in --compilation-config" in status.detail


def test_explicit_compile_mode_none_is_kept_and_the_downgrade_reported(
    build_config: BuildConfig,
) -> None:
    built = build_config(compilation_config={"mode": 0})
    cc = built.config.compilation_config
    assert cc.mode == CompilationMode.NONE
    assert cc.cudagraph_mode == CUDAGraphMode.FULL_DECODE_ONLY  # vLLM's own normalisation
    status = built.status("cuda_graphs")
    assert status.active and status.detail.startswith("FULL_DECODE_ONLY")
    assert "compilation mode is NONE" in status.detail


def test_cpu_platform_has_no_graphs_and_the_reason_is_given(build_config: BuildConfig) -> None:
    built = build_config(facts=CPU_FACTS, enforce_eager=True)
    assert built.config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE
    assert built.config.model_config.enforce_eager is True  # nothing to gain on CPU: kept
    status = built.status("cuda_graphs")
    assert not status.active and "no static graphs" in status.detail
