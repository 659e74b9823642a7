"""Triton kernel: per-head RMSNorm of q and k, rotary embedding, q out, k/v into a paged cache.

One program handles ``BLOCK_T`` tokens of one head (q heads first, then kv heads): q heads
write ``q_out``; kv heads also write ``k_out`` (optional), quantize k and v with the per-tensor
scales and store them at ``slot_mapping`` (negative slots skipped). The rotary partner of each
channel is loaded a second time rather than shuffled in registers, which keeps the kernel one
tile per head and the partial-rotary case a mask. Numerics: see ``reference.py``; divisions and
the square root are IEEE-rounded (``div_rn``/``sqrt_rn``) and FMA contraction is off so the
kernel rounds like the torch reference. Cache layouts: see ``kv_layout.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._jit import lazy_kernel
from .kv_layout import CacheGeometry, describe_kv_cache
from .reference import FP8_DTYPES, fp8_finite_max

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
CACHE_DTYPES = (*FP8_DTYPES, torch.bfloat16, torch.float16)


def _qk_norm_rope_cache_kernel(
    qkv_ptr,
    positions_ptr,
    q_weight_ptr,
    k_weight_ptr,
    cos_sin_ptr,
    q_out_ptr,
    k_out_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    k_scale_ptr,
    v_scale_ptr,
    num_tokens,
    num_heads,
    num_kv_heads,
    rotary_dim,
    block_size,
    qkv_stride,
    q_out_stride,
    k_out_stride,
    cos_sin_stride,
    k_block,
    k_slot,
    k_head,
    k_dim_outer,
    v_block,
    v_slot,
    v_head,
    v_dim,
    eps,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    IS_NEOX: tl.constexpr,
    KEY_X: tl.constexpr,
    FP8_MAX: tl.constexpr,
    WRITE_K_OUT: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    head = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < num_tokens
    rows64 = rows.to(tl.int64)
    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    mask = row_ok[:, None] & d_ok[None, :]

    # Rotary bookkeeping per channel: its partner channel, its frequency index, and whether it
    # takes "-partner*sin" (first of the pair) or "+partner*sin".
    half = rotary_dim // 2
    in_rot = d < rotary_dim
    if IS_NEOX:
        first = d < half
        partner = tl.where(first, d + half, d - half)
        freq = tl.where(first, d, d - half)
    else:
        first = (d % 2) == 0
        partner = d ^ 1
        freq = d // 2
    partner = tl.where(in_rot, partner, d)
    freq = tl.where(in_rot, freq, 0)

    # q heads and k heads sit at the same column offset head * HEAD_DIM of a qkv row.
    row_base = qkv_ptr + rows64[:, None] * qkv_stride + head * HEAD_DIM
    x = tl.load(row_base + d[None, :], mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(row_base + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    is_q = head < num_heads
    w = tl.where(
        is_q,
        tl.load(q_weight_ptr + d, mask=d_ok, other=0.0).to(tl.float32),
        tl.load(k_weight_ptr + d, mask=d_ok, other=0.0).to(tl.float32),
    )
    wp = tl.where(
        is_q,
        tl.load(q_weight_ptr + partner, mask=d_ok, other=0.0).to(tl.float32),
        tl.load(k_weight_ptr + partner, mask=d_ok, other=0.0).to(tl.float32),
    )
    mean_sq = tl.div_rn(tl.sum(x * x, axis=1), HEAD_DIM)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(mean_sq + eps))
    n = x * rstd[:, None] * w[None, :]
    n_partner = xp * rstd[:, None] * wp[None, :]

    pos = tl.load(positions_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    cs_row = cos_sin_ptr + pos[:, None] * cos_sin_stride
    rot_mask = row_ok[:, None] & in_rot[None, :]
    cos = tl.load(cs_row + freq[None, :], mask=rot_mask, other=1.0).to(tl.float32)
    sin = tl.load(cs_row + half + freq[None, :], mask=rot_mask, other=0.0).to(tl.float32)
    rotated = tl.where(first[None, :], n * cos - n_partner * sin, n * cos + n_partner * sin)
    out = tl.where(in_rot[None, :], rotated, n)

    if is_q:
        q_ptrs = q_out_ptr + rows64[:, None] * q_out_stride + head * HEAD_DIM + d[None, :]
        tl.store(q_ptrs, out.to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        kvh = head - num_heads
        if WRITE_K_OUT:
            k_ptrs = k_out_ptr + rows64[:, None] * k_out_stride + kvh * HEAD_DIM + d[None, :]
            tl.store(k_ptrs, out.to(k_out_ptr.dtype.element_ty), mask=mask)
        v_col = (num_heads + num_kv_heads + kvh) * HEAD_DIM
        v = tl.load(
            qkv_ptr + rows64[:, None] * qkv_stride + v_col + d[None, :], mask=mask, other=0.0
        ).to(tl.float32)
        k_val = out
        if FP8_MAX > 0:
            k_scale = tl.load(k_scale_ptr).to(tl.float32)
            v_scale = tl.load(v_scale_ptr).to(tl.float32)
            k_val = tl.minimum(tl.maximum(tl.div_rn(k_val, k_scale), -FP8_MAX), FP8_MAX)
            v = tl.minimum(tl.maximum(tl.div_rn(v, v_scale), -FP8_MAX), FP8_MAX)
        slot = tl.load(slot_mapping_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
        slot_ok = slot >= 0
        safe = tl.where(slot_ok, slot, 0)
        blk = safe // block_size
        bpos = safe % block_size
        cache_mask = mask & slot_ok[:, None]
        if KEY_X == 0:
            k_dim = d
            v_dim_off = d
        else:
            k_dim = (d // KEY_X) * k_dim_outer + d % KEY_X
            v_dim_off = d * v_dim
        k_base = blk * k_block + bpos * k_slot + kvh * k_head
        v_base = blk * v_block + bpos * v_slot + kvh * v_head
        tl.store(
            key_cache_ptr + k_base[:, None] + k_dim[None, :],
            k_val.to(key_cache_ptr.dtype.element_ty),
            mask=cache_mask,
        )
        tl.store(
            value_cache_ptr + v_base[:, None] + v_dim_off[None, :],
            v.to(value_cache_ptr.dtype.element_ty),
            mask=cache_mask,
        )


qk_norm_rope_cache_kernel = lazy_kernel(_qk_norm_rope_cache_kernel)


@dataclass(frozen=True)
class LaunchConfig:
    """Tokens per program and warps; ``None`` picks a default from the token count."""

    block_t: int | None = None
    num_warps: int | None = None


def default_launch(num_tokens: int, head_dim: int, cfg: LaunchConfig) -> tuple[int, int]:
    # Decode batches are small: one token per program keeps every CU busy. Prefill batches
    # amortise the weight/partner loads over several tokens per program.
    block_t = cfg.block_t or (1 if num_tokens <= 256 else 4)
    elems = block_t * triton.next_power_of_2(head_dim)
    num_warps = cfg.num_warps or max(1, min(8, elems // 256))
    return block_t, num_warps


def kernel_constexprs(
    head_dim: int,
    is_neox: bool,
    geo_key_x: int,
    cache_dtype: torch.dtype,
    write_k_out: bool,
    block_t: int,
) -> dict[str, object]:
    """The constexpr arguments that select one compiled variant."""
    return {
        "HEAD_DIM": head_dim,
        "HEAD_DIM_PAD": triton.next_power_of_2(head_dim),
        "IS_NEOX": is_neox,
        "KEY_X": geo_key_x,
        "FP8_MAX": fp8_finite_max(cache_dtype) if cache_dtype in FP8_DTYPES else 0.0,
        "WRITE_K_OUT": write_k_out,
        "BLOCK_T": block_t,
    }


def qk_norm_rope_cache_triton(
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
    launch: LaunchConfig = LaunchConfig(),
) -> None:
    """Launch the fused kernel (tensors on a GPU, or on CPU under ``TRITON_INTERPRET=1``)."""
    geo = validate_fused_args(
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
    num_tokens = qkv.shape[0]
    if num_tokens == 0:
        return
    block_t, num_warps = default_launch(num_tokens, head_dim, launch)
    q2 = q_out.view(num_tokens, num_heads * head_dim)
    k2 = k_out.view(num_tokens, num_kv_heads * head_dim) if k_out is not None else q2
    grid = (triton.cdiv(num_tokens, block_t), num_heads + num_kv_heads)
    qk_norm_rope_cache_kernel[grid](
        qkv,
        positions,
        q_weight,
        k_weight,
        cos_sin_cache,
        q2,
        k2,
        key_cache,
        value_cache,
        slot_mapping,
        k_scale,
        v_scale,
        num_tokens,
        num_heads,
        num_kv_heads,
        cos_sin_cache.shape[-1],
        geo.block_size,
        qkv.stride(0),
        q2.stride(0),
        k2.stride(0),
        cos_sin_cache.stride(0),
        geo.k_block,
        geo.k_slot,
        geo.k_head,
        geo.k_dim_outer,
        geo.v_block,
        geo.v_slot,
        geo.v_head,
        geo.v_dim,
        float(eps),
        **kernel_constexprs(
            head_dim, is_neox, geo.key_x, key_cache.dtype, k_out is not None, block_t
        ),
        num_warps=num_warps,
        enable_fp_fusion=False,
    )


def validate_fused_args(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> CacheGeometry:
    """Check shapes/dtypes once, with one clear error per problem; return the cache geometry."""
    t = qkv.shape[0]
    width = (num_heads + 2 * num_kv_heads) * head_dim
    if qkv.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"qkv must be bfloat16 or float16, got {qkv.dtype}")
    if qkv.ndim != 2 or qkv.shape[1] != width or qkv.stride(1) != 1:
        raise ValueError(
            f"qkv must be [num_tokens, (num_heads + 2*num_kv_heads) * head_dim = {width}] with a "
            f"dense last dim, got {tuple(qkv.shape)} strides {qkv.stride()}"
        )
    if positions.shape != (t,) or slot_mapping.shape != (t,):
        raise ValueError(
            f"positions {tuple(positions.shape)} and slot_mapping {tuple(slot_mapping.shape)} "
            f"must both be [num_tokens={t}]"
        )
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.numel() != head_dim or not w.is_contiguous():
            raise ValueError(f"{name} must hold head_dim={head_dim} contiguous values")
    rotary_dim = cos_sin_cache.shape[-1]
    if cos_sin_cache.ndim != 2 or rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(
            f"cos_sin_cache must be [max_position, rotary_dim] with an even rotary_dim <= "
            f"head_dim={head_dim}, got {tuple(cos_sin_cache.shape)}"
        )
    if cos_sin_cache.stride(1) != 1:
        raise ValueError("cos_sin_cache must have a dense last dim")
    if q_out.shape != (t, num_heads, head_dim) or not q_out.is_contiguous():
        raise ValueError(f"q_out must be a contiguous [{t}, {num_heads}, {head_dim}] tensor")
    if k_out is not None and (
        k_out.shape != (t, num_kv_heads, head_dim) or not k_out.is_contiguous()
    ):
        raise ValueError(f"k_out must be a contiguous [{t}, {num_kv_heads}, {head_dim}] tensor")
    if key_cache.dtype not in CACHE_DTYPES:
        raise ValueError(
            f"cache dtype {key_cache.dtype} unsupported; use one of {CACHE_DTYPES} (view a uint8 "
            "FP8 cache as the platform's FP8 dtype first)"
        )
    return describe_kv_cache(key_cache, value_cache, num_kv_heads, head_dim)
