"""Backend choice for the fused QK-norm + RoPE + KV-cache write: AITER, Triton, or torch.

Order (``backend="auto"``): AMD's AITER op when this is a ROCm build, AITER is importable and
the shape is one it supports (head dims 64/128/256, the flash cache layout); else the Triton
kernel when the tensors are on a GPU (or Triton's CPU interpreter is on); else the torch
reference. The PyPI package named ``aiter`` is an unrelated async library: AMD's is recognised
by the module that holds the fused op, and is never imported outside a ROCm build.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
import triton

from .kv_layout import FLASH
from .qk_norm_rope_cache import LaunchConfig, qk_norm_rope_cache_triton, validate_fused_args
from .reference import qk_norm_rope_cache_reference

logger = logging.getLogger(__name__)

Backend = Literal["auto", "aiter", "triton", "torch"]
AITER_HEAD_DIMS = (64, 128, 256)
AITER_MODULE = "aiter.ops.fused_qk_norm_rope_cache_quant"
AITER_FUNCTION = "fused_qk_norm_rope_cache_pts_quant_shuffle"


def is_rocm_build() -> bool:
    return torch.version.hip is not None


def on_gpu(t: torch.Tensor) -> bool:
    """Whether ``t`` lives on a CUDA or ROCm device (both are ``cuda`` to torch)."""
    return t.is_cuda


@functools.cache
def find_aiter_fused_op() -> Callable[..., Any] | None:
    """AITER's fused QK-norm/RoPE/cache function, or None where AMD's AITER is absent."""
    if not is_rocm_build() or importlib.util.find_spec("aiter") is None:
        return None
    try:
        module = importlib.import_module(AITER_MODULE)
    except Exception as exc:  # AITER raises more than ImportError when its HIP libs are off
        logger.info(
            "aiter is installed but %s is unusable (%s): not AMD's AITER?", AITER_MODULE, exc
        )
        return None
    fn = getattr(module, AITER_FUNCTION, None)
    return fn if callable(fn) else None


def aiter_supports(qkv: torch.Tensor, key_cache: torch.Tensor, head_dim: int) -> bool:
    """Shapes AITER's fused op handles (vLLM 0.32 gates its fusion pass the same way)."""
    return (
        head_dim in AITER_HEAD_DIMS
        and key_cache.ndim == 4  # flash layout; AITER's other layout is its own shuffle one
        and on_gpu(qkv)
        and qkv.is_contiguous()
    )


def select_backend(
    qkv: torch.Tensor, key_cache: torch.Tensor, head_dim: int, requested: Backend = "auto"
) -> Backend:
    """The backend that will run; an explicit request that cannot run raises ValueError."""
    triton_ok = on_gpu(qkv) or bool(triton.knobs.runtime.interpret)
    if requested == "aiter":
        if find_aiter_fused_op() is None:
            raise ValueError("backend='aiter' requested but AMD's AITER is not available")
        if not aiter_supports(qkv, key_cache, head_dim):
            raise ValueError(
                f"backend='aiter' does not support head_dim={head_dim} / this cache layout "
                f"(AITER: head dims {AITER_HEAD_DIMS}, {FLASH} layout, GPU tensors)"
            )
        return "aiter"
    if requested == "triton":
        if not triton_ok:
            raise ValueError("backend='triton' needs GPU tensors (or TRITON_INTERPRET=1)")
        return "triton"
    if requested == "torch":
        return "torch"
    if requested != "auto":
        raise ValueError(f"backend must be auto, aiter, triton or torch, got {requested!r}")
    if find_aiter_fused_op() is not None and aiter_supports(qkv, key_cache, head_dim):
        return "aiter"
    return "triton" if triton_ok else "torch"


def _run_aiter(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
    is_neox: bool,
) -> None:
    """AITER's positional signature as vLLM 0.32 calls it (``rocm_aiter_ops``)."""
    fn = find_aiter_fused_op()
    assert fn is not None
    rotary_dim = cos_sin_cache.shape[-1]
    fn(
        qkv,
        q_weight,
        k_weight,
        cos_sin_cache,
        positions,
        qkv.shape[0],
        num_heads,
        num_kv_heads,
        num_kv_heads,
        head_dim,
        is_neox,
        eps,
        q_out,
        key_cache,
        value_cache,
        slot_mapping,
        k_scale,
        v_scale,
        k_out,
        None,
        k_out is not None,
        False,  # use_shuffle_layout
        key_cache.shape[1],
        16 // key_cache.element_size(),
        0 if rotary_dim == head_dim else rotary_dim,
    )


def qk_norm_rope_cache(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
    is_neox: bool,
    q_out: torch.Tensor | None = None,
    k_out: torch.Tensor | None = None,
    backend: Backend = "auto",
    launch: LaunchConfig | None = None,
) -> torch.Tensor:
    """Fused per-head RMSNorm(q, k) + RoPE + FP8 cache write of k and v; returns ``q_out``.

    ``qkv``: ``[T, (num_heads + 2*num_kv_heads) * head_dim]`` bf16/fp16. ``cos_sin_cache``:
    ``[max_position, rotary_dim]`` (``[cos | sin]``, partial rotary when rotary_dim <
    head_dim). Caches: see ``kv_layout``; FP8 caches are per-tensor scaled by ``k_scale`` and
    ``v_scale`` (fp32 tensors of one element). Slots < 0 are skipped; slots must be below
    ``num_blocks * block_size``, which only the torch path checks (on the GPU it would cost a
    device synchronisation per call, and vLLM's slot mappings are in range by construction).
    """
    if q_out is None:
        q_out = torch.empty(qkv.shape[0], num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    validate_fused_args(
        qkv,
        positions,
        q_weight,
        k_weight,
        cos_sin_cache,
        key_cache,
        value_cache,
        slot_mapping,
        q_out,
        k_out,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
    )
    args = (
        qkv,
        positions,
        q_weight,
        k_weight,
        cos_sin_cache,
        key_cache,
        value_cache,
        slot_mapping,
        k_scale,
        v_scale,
        q_out,
        k_out,
    )
    shape: dict[str, Any] = {
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "eps": eps,
        "is_neox": is_neox,
    }
    chosen = select_backend(qkv, key_cache, head_dim, backend)
    if chosen == "aiter":
        _run_aiter(*args, **shape)
    elif chosen == "triton":
        qk_norm_rope_cache_triton(*args, **shape, launch=launch or LaunchConfig())
    else:
        qk_norm_rope_cache_reference(*args, **shape)
    return q_out
