"""AITER policy: attention backend preference and the fused QK-norm/RoPE/KV-cache pass.

The import-time environment (``VLLM_ROCM_USE_AITER``, quick all-reduce) is in
:mod:`atom_tier.policy.env`, which must stay importable without vLLM.

Attention: vLLM's ROCm selector puts ``ROCM_ATTN`` first unless a KV connector is configured
(then it skips it), and AITER's backends only follow. With AITER enabled atom-tier moves
``ROCM_AITER_FA`` (then ``ROCM_AITER_UNIFIED_ATTN``) — or ``ROCM_AITER_MLA`` for MLA models —
to the front of the *valid* backends, so a backend the layer cannot use is never forced and an
explicit ``--attention-backend`` still wins (vLLM tries it before asking for the list).

Fused QK-norm + RoPE + KV-cache write (``pass_config.fuse_qk_norm_rope_kvcache``): on when AITER
is enabled, the model's attention normalises q and k per head (the shape vLLM's
``QkNormRopeKvCachePattern`` matches, vllm/compilation/passes/fusion/qk_norm_rope_kvcache_fusion.py:
Qwen3 yes, Llama, DeepSeek and MiniMax-M2's full-width norm no), and AITER supports the head dim
(64/128/256) and the dtype (bf16/fp16). For a model without such norms the pass would replace
nothing, so it stays off and Inductor graph partition is not turned on for it. vLLM drops the
pass when it splits graphs at attention without Inductor graph partition (the KV-cache update
would sit outside the compiled graph), so atom-tier also turns ``use_inductor_graph_partition``
on when the user left it unset, and enables the ``rotary_embedding`` custom op the pass matches.
The pass runs for compiled batches of at most ``pass_config.rope_kvcache_fusion_max_token_num``
tokens (256 by default); after compiling, vLLM logs ``QK-Norm+RoPE/MRoPE+KVCache fusion:
replaced N pattern(s)``: N is what was really fused. ``VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1``
makes ``ROCM_AITER_FA`` refuse the fusion (``fused_qk_norm_rope_kvcache_supported``), so the
pass stays off then too.

This module imports nothing from vLLM at import time (the ROCm platform class imports it while
vLLM is still resolving its platform).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atom_tier.policy.decisions import Change, Decision, PlatformFacts
from atom_tier.settings import AtomTierSettings, ForeignEnv

QUICK_REDUCE_TP_SIZES = (2, 4, 8)
FUSED_HEAD_DIMS = (64, 128, 256)
# Architectures whose vLLM 0.32 attention applies RMSNorm(head_dim) to q and k before RoPE
# (vllm/model_executor/models/qwen3.py, qwen3_moe.py, afmoe.py, apertus.py, exaone4.py,
# exaone_moe.py, laguna.py): what the fused pass's pattern matches.
PER_HEAD_QK_NORM_ARCHITECTURES = frozenset(
    {
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "AfmoeForCausalLM",
        "ApertusForCausalLM",
        "Exaone4ForCausalLM",
        "ExaoneMoeForCausalLM",
        "LagunaForCausalLM",
    }
)
# Architectures where a config flag adds the same per-head norms (glm4_moe.py, qwen2.py).
QK_NORM_FLAGS = {"Glm4MoeForCausalLM": "use_qk_norm", "Qwen2ForCausalLM": "qk_norm"}
AITER_MHA_ORDER = ("ROCM_AITER_FA", "ROCM_AITER_UNIFIED_ATTN")
AITER_MLA_ORDER = ("ROCM_AITER_MLA",)


def prefer_aiter_backends(
    valid: Sequence[tuple[str, int]], use_mla: bool, facts: PlatformFacts
) -> list[tuple[str, int]]:
    """Re-rank vLLM's valid attention backends (name, priority; lower wins): AITER first.

    Only backends vLLM already found valid for the layer are re-ranked; with AITER disabled
    the list is returned unchanged (an operator's VLLM_ROCM_USE_AITER=0 wins).
    """
    if not facts.aiter_enabled:
        return list(valid)
    order = AITER_MLA_ORDER if use_mla else AITER_MHA_ORDER
    lowest = min((priority for _, priority in valid), default=0)
    ranked = []
    for name, priority in valid:
        if name in order:
            priority = lowest - len(order) + order.index(name)
        ranked.append((name, priority))
    return ranked


def decide_attention(config: Any, facts: PlatformFacts, *, connector_planned: bool) -> Decision:
    """Which attention atom-tier prefers; the per-layer choice is vLLM's (logged in workers)."""
    feature = "aiter_attention"
    chosen = config.attention_config.backend
    if chosen is not None:
        return Decision(
            feature, chosen.name.startswith("ROCM_AITER"), f"--attention-backend {chosen.name} kept"
        )
    if facts.name != "rocm":
        return Decision(feature, False, f"ROCm only (the {facts.name} platform has its own)")
    if not facts.aiter_available:
        return Decision(feature, False, "AMD AITER is not installed or does not support this GPU")
    if not facts.aiter_enabled:
        return Decision(feature, False, "VLLM_ROCM_USE_AITER=0 set by the operator, kept")
    model = config.model_config
    if model is not None and model.use_mla:
        if not facts.aiter_mla_enabled:
            return Decision(feature, False, "VLLM_ROCM_USE_AITER_MLA=0 set by the operator, kept")
        return Decision(feature, True, "ROCM_AITER_MLA preferred for this MLA model")
    first = "ROCM_AITER_FA" if facts.aiter_mha_enabled else "ROCM_AITER_UNIFIED_ATTN"
    reason = f"{first} preferred over ROCM_ATTN"
    has_connector = connector_planned or (
        config.kv_transfer_config is not None and bool(config.kv_transfer_config.kv_connector)
    )
    if has_connector:
        reason += " (vLLM skips ROCM_ATTN anyway when a KV connector is configured)"
    return Decision(feature, True, reason)


def has_per_head_qk_norm(model: Any) -> bool:
    """Whether the model's attention normalises q and k per head (the fused pass's pattern)."""
    config = model.hf_text_config
    for architecture in model.architectures or []:
        if architecture in PER_HEAD_QK_NORM_ARCHITECTURES:
            return True
        flag = QK_NORM_FLAGS.get(architecture)
        if flag is not None and bool(getattr(config, flag, False)):
            return True
    return False


def decide_fused_qk_norm_rope(
    settings: AtomTierSettings, config: Any, facts: PlatformFacts, graphs: Decision
) -> Decision:
    """AITER's fused QK-norm + RoPE + KV-cache pass where the model and compile allow it."""
    import torch

    from atom_tier.policy.graphs import compile_enabled_after

    feature = "fused_qk_norm_rope_kvcache"
    flag = "compilation_config.pass_config.fuse_qk_norm_rope_kvcache"
    cc = config.compilation_config
    explicit = cc.pass_config.fuse_qk_norm_rope_kvcache
    if explicit is not None:
        return Decision(feature, bool(explicit), "set in --compilation-config pass_config, kept")
    off = (Change(flag, False),)
    if not settings.fused_qk_norm_rope:
        return Decision(feature, False, "ATOM_TIER_FUSED_QK_NORM_ROPE=0", off)
    if facts.name != "rocm" or not facts.aiter_available:
        return Decision(feature, False, "needs ROCm with AMD AITER")
    if not facts.aiter_enabled:
        return Decision(feature, False, "VLLM_ROCM_USE_AITER=0 set by the operator, kept", off)
    model = config.model_config
    if model is None:
        return Decision(feature, False, "no model configured", off)
    if model.use_mla:
        return Decision(feature, False, "MLA models use vLLM's MLA RoPE/KV-cache fusion instead")
    if not has_per_head_qk_norm(model):
        names = "/".join(model.architectures or ["this model"])
        reason = f"{names} has no per-head q/k norm: the pass would replace nothing"
        return Decision(feature, False, reason, off)
    if facts.aiter_shuffle_kv_cache:
        reason = (
            "VLLM_ROCM_SHUFFLE_KV_CACHE_LAYOUT=1: ROCM_AITER_FA refuses the fused KV-cache write "
            "with the shuffled layout (rocm_aiter_fa.py fused_qk_norm_rope_kvcache_supported)"
        )
        return Decision(feature, False, reason, off)
    head = model.get_head_size()
    if head not in FUSED_HEAD_DIMS:
        dims = "/".join(str(d) for d in FUSED_HEAD_DIMS)
        reason = f"AITER's fused kernel supports head dims {dims}; this model: {head}"
        return Decision(feature, False, reason, off)
    if model.dtype not in (torch.bfloat16, torch.float16):
        return Decision(feature, False, f"needs bf16/fp16 activations, not {model.dtype}", off)
    if "-rotary_embedding" in cc.custom_ops:
        return Decision(feature, False, "-rotary_embedding in custom_ops kept", off)
    if not compile_enabled_after(graphs, config):
        return Decision(feature, False, "torch.compile is off, so no fusion pass runs", off)
    partition = cc.use_inductor_graph_partition
    if partition is False and cc.splitting_ops is None:
        return Decision(
            feature,
            False,
            "use_inductor_graph_partition=false kept: vLLM drops the pass when splitting at "
            "attention without it",
            off,
        )
    if not facts.graph_partition:
        return Decision(feature, False, "needs torch >= 2.9 (Inductor graph partition)", off)
    changes = [
        Change(flag, True),
        Change("compilation_config.custom_ops", "+rotary_embedding", append=True),
    ]
    if partition is None and cc.splitting_ops is None:
        changes.append(Change("compilation_config.use_inductor_graph_partition", True))
    limit = cc.pass_config.rope_kvcache_fusion_max_token_num
    return Decision(
        feature,
        True,
        f"per-head q/k norms, head dim {head} supported by AITER; Inductor graph partition "
        f"keeps the KV-cache write in the compiled graph; fuses batches of <= {limit} tokens "
        "(vLLM logs 'QK-Norm+RoPE/MRoPE+KVCache fusion: replaced N pattern(s)' once compiled)",
        tuple(changes),
    )


def describe_fused_qk_norm_rope(config: Any, decision: Decision) -> tuple[bool, str]:
    """Final state; predicts vLLM's later drop of the pass (``set_splitting_ops_for_v1``)."""
    cc = config.compilation_config
    on = bool(cc.pass_config.fuse_qk_norm_rope_kvcache)
    if on and not cc.use_inductor_graph_partition and cc.splitting_ops is None:
        return False, "vLLM drops it: graphs split at attention without Inductor graph partition"
    if on == decision.active:
        return on, decision.reason
    return on, "changed by vLLM after atom-tier's defaults (see its log above)"


def describe_quick_reduce(config: Any, facts: PlatformFacts, env: ForeignEnv) -> tuple[bool, str]:
    """Quick all-reduce as vLLM will use it: vLLM reads ``VLLM_ROCM_QUICK_REDUCE_QUANTIZATION``
    only (vllm/distributed/device_communicators/quick_all_reduce.py init_quick_all_reduce).

    ``AITER_QUICK_REDUCE_QUANTIZATION`` is AITER's own name, read by ATOM's engine, never by
    vLLM; atom-tier honours it by mapping it to its setting ``ATOM_TIER_QUICK_REDUCE``, which
    sets vLLM's variable at start-up unless that is already set.
    """
    if facts.name != "rocm":
        return False, "ROCm only"
    mode = (env.vllm_rocm_quick_reduce or "NONE").upper()
    if mode == "NONE":
        aiter_mode = (env.aiter_quick_reduce or "NONE").upper()
        ignored = f" (AITER_QUICK_REDUCE_QUANTIZATION={aiter_mode} is not read by vLLM)"
        return False, "VLLM_ROCM_QUICK_REDUCE_QUANTIZATION=NONE" + (
            ignored if aiter_mode != "NONE" else ""
        )
    tp = config.parallel_config.tensor_parallel_size
    if tp not in QUICK_REDUCE_TP_SIZES:
        return False, f"vLLM {mode} configured; used at tensor parallel 2/4/8 only (this run: {tp})"
    return True, f"vLLM {mode} at tensor parallel {tp} (single node, large all-reduces only)"


def describe_aiter_kernels(config: Any, facts: PlatformFacts) -> tuple[bool, str]:
    """The AITER kernels ``VLLM_ROCM_USE_AITER=1`` turns on besides attention, each with the
    variable that turns it off; RMSNorm as vLLM's final IR op priority has it."""
    from atom_tier.preflight.checks_environment import describe_aiter_switches

    if facts.name != "rocm" or not facts.aiter_available or not facts.aiter_enabled:
        return False, "need AITER on ROCm with VLLM_ROCM_USE_AITER=1"
    states = dict(facts.aiter_switches)
    priority = getattr(getattr(config, "kernel_config", None), "ir_op_priority", None)
    rms_norm = list(getattr(priority, "rms_norm", None) or [])
    overrides = {}
    if states.get("VLLM_ROCM_USE_AITER_RMSNORM", True) and rms_norm[:1] != ["aiter"]:
        states["VLLM_ROCM_USE_AITER_RMSNORM"] = False
        overrides["rmsnorm"] = "off (vLLM uses AITER's RMSNorm only when graphs are captured)"
    return any(states.values()), describe_aiter_switches(states, overrides)


def describe_aiter(facts: PlatformFacts) -> tuple[bool, str]:
    if facts.name != "rocm":
        return False, "ROCm only"
    arch = f" on {facts.gcn_arch.split(':')[0]}" if facts.gcn_arch else ""
    if not facts.aiter_available:
        return False, f"AMD AITER not installed or not supported{arch}"
    if not facts.aiter_enabled:
        return False, "VLLM_ROCM_USE_AITER=0 set by the operator, kept"
    return True, f"VLLM_ROCM_USE_AITER=1{arch}"
