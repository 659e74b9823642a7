"""AITER attention preference, the fused QK-norm/RoPE/KV-cache pass, import-time environment.

Configs are real VllmConfigs of the tiny Qwen3 (head dim overridden through vLLM's
`hf_overrides`); AITER availability is a platform double (conftest.py): AITER cannot exist here.
"""

from __future__ import annotations

import pytest

from atom_tier.policy.env import AITER_QUICK_REDUCE, import_time_env
from atom_tier.policy.kernels import prefer_aiter_backends
from atom_tier.settings import QuickReduce, load_settings
from tests.policy.conftest import CPU_FACTS, ROCM_FACTS, BuildConfig, with_facts

FUSED = "fused_qk_norm_rope_kvcache"


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_fused_pass_on_for_supported_head_dims(build_config: BuildConfig, head_dim: int) -> None:
    built = build_config(hf_overrides={"head_dim": head_dim})
    cc = built.config.compilation_config
    assert cc.pass_config.fuse_qk_norm_rope_kvcache is True
    # vLLM drops the pass when it splits at attention without graph partition: kept on here.
    assert cc.use_inductor_graph_partition is True
    assert "+rotary_embedding" in cc.custom_ops
    assert cc.cudagraph_mode.name == "FULL_AND_PIECEWISE"
    assert built.status(FUSED).active


@pytest.mark.parametrize("head_dim", [32, 96])
def test_fused_pass_off_with_reason_for_other_head_dims(
    build_config: BuildConfig, head_dim: int
) -> None:
    built = build_config(hf_overrides={"head_dim": head_dim})
    assert built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    status = built.status(FUSED)
    assert not status.active and f"this model: {head_dim}" in status.detail


def test_fused_pass_opt_out(build_config: BuildConfig) -> None:
    built = build_config(env={"ATOM_TIER_FUSED_QK_NORM_ROPE": "0"}, hf_overrides={"head_dim": 128})
    assert built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    assert "ATOM_TIER_FUSED_QK_NORM_ROPE=0" in built.status(FUSED).detail


def test_fused_pass_explicit_user_setting_is_kept(build_config: BuildConfig) -> None:
    built = build_config(
        hf_overrides={"head_dim": 128},
        compilation_config={"pass_config": {"fuse_qk_norm_rope_kvcache": False}},
    )
    assert built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    assert "kept" in built.status(FUSED).detail


def test_fused_pass_respects_disabled_rotary_custom_op(build_config: BuildConfig) -> None:
    built = build_config(
        hf_overrides={"head_dim": 128}, compilation_config={"custom_ops": ["-rotary_embedding"]}
    )
    assert built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    assert "-rotary_embedding" in built.status(FUSED).detail


def test_fused_pass_off_when_user_disables_graph_partition(build_config: BuildConfig) -> None:
    built = build_config(
        hf_overrides={"head_dim": 128},
        compilation_config={"use_inductor_graph_partition": False},
    )
    assert built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    assert "use_inductor_graph_partition=false" in built.status(FUSED).detail


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (with_facts(ROCM_FACTS, aiter_enabled=False), "VLLM_ROCM_USE_AITER=0"),
        (with_facts(ROCM_FACTS, aiter_available=False), "needs ROCm with AMD AITER"),
        (CPU_FACTS, "needs ROCm with AMD AITER"),
    ],
)
def test_fused_pass_needs_aiter(build_config: BuildConfig, facts, why: str) -> None:  # type: ignore[no-untyped-def]
    built = build_config(facts=facts, hf_overrides={"head_dim": 128})
    assert not built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache
    assert why in built.status(FUSED).detail


def test_fused_pass_off_under_the_eager_escape_hatch(build_config: BuildConfig) -> None:
    built = build_config(
        env={"ATOM_TIER_ALLOW_EAGER": "1"}, enforce_eager=True, hf_overrides={"head_dim": 128}
    )
    assert "torch.compile is off" in built.status(FUSED).detail


def test_attention_preference_reported(build_config: BuildConfig) -> None:
    status = build_config().status("aiter_attention")
    assert status.active and "ROCM_AITER_FA preferred" in status.detail
    assert "skips ROCM_ATTN anyway when a KV connector is configured" in status.detail
    off = build_config(env={"ATOM_TIER_CONNECTOR": "off"}).status("aiter_attention")
    assert off.active and "anyway" not in off.detail
    disabled = build_config(facts=with_facts(ROCM_FACTS, aiter_enabled=False))
    assert not disabled.status("aiter_attention").active
    assert not build_config(facts=CPU_FACTS).status("aiter_attention").active


# vLLM 0.32's ROCm priority order for standard attention without a connector (rocm.py).
VLLM_ORDER = [
    ("ROCM_ATTN", 0),
    ("ROCM_AITER_FA", 1),
    ("ROCM_AITER_UNIFIED_ATTN", 2),
    ("TRITON_ATTN", 3),
]


def best(ranked: list[tuple[str, int]]) -> str:
    return min(ranked, key=lambda item: item[1])[0]


def test_aiter_backends_move_first_among_valid_ones() -> None:
    assert best(prefer_aiter_backends(VLLM_ORDER, False, ROCM_FACTS)) == "ROCM_AITER_FA"
    without_fa = [b for b in VLLM_ORDER if b[0] != "ROCM_AITER_FA"]
    assert best(prefer_aiter_backends(without_fa, False, ROCM_FACTS)) == "ROCM_AITER_UNIFIED_ATTN"
    only_others = [("ROCM_ATTN", 0), ("TRITON_ATTN", 3)]
    assert prefer_aiter_backends(only_others, False, ROCM_FACTS) == only_others
    mla = [("TRITON_MLA", 1), ("ROCM_AITER_MLA", 0), ("ROCM_AITER_TRITON_MLA", 2)]
    assert best(prefer_aiter_backends(list(reversed(mla)), True, ROCM_FACTS)) == "ROCM_AITER_MLA"


def test_operator_disabling_aiter_keeps_vllms_order() -> None:
    facts = with_facts(ROCM_FACTS, aiter_enabled=False)
    assert prefer_aiter_backends(VLLM_ORDER, False, facts) == VLLM_ORDER


def test_import_time_env_defaults() -> None:
    env = import_time_env(load_settings({}), "rocm")
    assert env == {
        "PYTHONHASHSEED": "0",
        "VLLM_ROCM_USE_AITER": "1",
        "VLLM_ROCM_USE_AITER_MHA": "1",
        "VLLM_ROCM_USE_AITER_MLA": "1",
        "VLLM_ROCM_QUICK_REDUCE_QUANTIZATION": "INT4",
        "AITER_QUICK_REDUCE_QUANTIZATION": "INT4",
    }
    assert import_time_env(load_settings({}), "cpu") == {"PYTHONHASHSEED": "0"}


@pytest.mark.parametrize(
    ("setting", "vllm_value", "aiter_value"),
    [
        ("INT6", "INT6", "INT6"),
        ("INT8", "INT8", "FP8"),
        ("FP", "FP", "FP"),
        ("none", "NONE", "NONE"),
    ],
)
def test_quick_reduce_maps_to_both_variables(
    setting: str, vllm_value: str, aiter_value: str
) -> None:
    env = import_time_env(load_settings({"ATOM_TIER_QUICK_REDUCE": setting}), "rocm")
    assert env["VLLM_ROCM_QUICK_REDUCE_QUANTIZATION"] == vllm_value
    assert env["AITER_QUICK_REDUCE_QUANTIZATION"] == aiter_value


def test_every_quick_reduce_setting_has_an_aiter_value_aiter_accepts() -> None:
    aiter_choices = {"FP", "FP8", "INT6", "INT4", "INT3", "NONE"}  # AITER's own list
    assert set(AITER_QUICK_REDUCE) == set(QuickReduce)
    assert set(AITER_QUICK_REDUCE.values()) <= aiter_choices


def test_quick_reduce_reported_as_inactive_at_tensor_parallel_1(
    build_config: BuildConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_ROCM_QUICK_REDUCE_QUANTIZATION", "INT4")
    monkeypatch.setenv("AITER_QUICK_REDUCE_QUANTIZATION", "INT4")
    status = build_config().status("quick_reduce")
    assert not status.active and "tensor parallel 2/4/8 only (this run: 1)" in status.detail


def test_quick_reduce_reported_active_at_tensor_parallel_2(
    build_config: BuildConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_ROCM_QUICK_REDUCE_QUANTIZATION", "INT8")
    monkeypatch.setenv("AITER_QUICK_REDUCE_QUANTIZATION", "FP8")
    status = build_config(tensor_parallel_size=2).status("quick_reduce")
    assert status.active and status.detail.startswith("vLLM INT8 at tensor parallel 2")


def test_quick_reduce_follows_the_variable_vllm_reads_not_aiters(
    build_config: BuildConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM reads VLLM_ROCM_QUICK_REDUCE_QUANTIZATION only (quick_all_reduce.py
    init_quick_all_reduce); AITER's name set alone changes nothing in vLLM."""
    monkeypatch.setenv("VLLM_ROCM_QUICK_REDUCE_QUANTIZATION", "NONE")
    monkeypatch.setenv("AITER_QUICK_REDUCE_QUANTIZATION", "INT4")
    status = build_config(tensor_parallel_size=2).status("quick_reduce")
    assert not status.active
    assert "AITER_QUICK_REDUCE_QUANTIZATION=INT4 is not read by vLLM" in status.detail


def test_fused_pass_and_partition_stay_off_for_a_model_without_qk_norms(
    build_config: BuildConfig,
) -> None:
    """Llama's attention has no q/k norm: vLLM's QkNormRopeKvCachePattern matches nothing."""
    built = build_config(hf_overrides={"architectures": ["LlamaForCausalLM"], "head_dim": 128})
    assert built.config.model_config.architectures == ["LlamaForCausalLM"]
    cc = built.config.compilation_config
    assert cc.pass_config.fuse_qk_norm_rope_kvcache is False
    assert cc.use_inductor_graph_partition is not True
    status = built.status(FUSED)
    assert not status.active and "no per-head q/k norm" in status.detail


def test_fused_pass_off_with_the_shuffled_kv_cache_layout(build_config: BuildConfig) -> None:
    facts = with_facts(ROCM_FACTS, aiter_shuffle_kv_cache=True)
    built = build_config(facts=facts, hf_overrides={"head_dim": 128})
    assert built.config.compilation_config.pass_config.fuse_qk_norm_rope_kvcache is False
    assert "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1" in built.status(FUSED).detail


def test_fused_pass_reason_names_the_token_limit_and_vllms_count(
    build_config: BuildConfig,
) -> None:
    detail = build_config(hf_overrides={"head_dim": 128}).status(FUSED).detail
    assert "batches of <= 256 tokens" in detail and "replaced N pattern(s)" in detail
