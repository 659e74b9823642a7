"""Torch references for the Triton kernels; also the fallback where no GPU is present.

Numerics of the fused QK-norm + RoPE + KV-cache write (the Triton kernel follows them step for
step, so the two differ only where fp32 reductions are ordered differently):

* q, k and v are read from the qkv projection output and widened to fp32;
* RMSNorm per head in fp32: ``x * rsqrt(mean(x^2) + eps) * weight``, with no rounding to the
  model dtype in between (vLLM's unfused ``RMSNorm`` rounds there; one rounding less is the
  point of fusing);
* rotary embedding in fp32 on the first ``rotary_dim`` channels, ``cos_sin_cache`` holding
  ``[cos | sin]`` of ``rotary_dim // 2`` each per position (vLLM's convention); NeoX rotates
  the two halves, GPT-J adjacent pairs;
* q (and optionally k) rounded once to the model dtype;
* k and v divided by their per-tensor scales, clamped to the FP8 format's finite range (torch
  turns out-of-range values into NaN, the hardware converters saturate) and rounded to
  nearest-even into the cache; slots < 0 are skipped.
"""

from __future__ import annotations

import torch

from .kv_layout import describe_kv_cache, token_major_views

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def fp8_finite_max(dtype: torch.dtype) -> float:
    """Largest finite value of an FP8 cache dtype (448 for e4m3fn, 240 for e4m3fnuz)."""
    return float(torch.finfo(dtype).max)


def rms_norm_fp32(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    return xf * rstd * weight.float()


def apply_rotary_fp32(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, is_neox: bool
) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` channels of fp32 ``x`` ``[T, H, D]``."""
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    c, s = cos[:, None, :], sin[:, None, :]
    if is_neox:
        x1, x2 = rot.chunk(2, dim=-1)
        out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).flatten(-2)
    return torch.cat((out, rest), dim=-1)


def qk_norm_rope_fp32(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
    is_neox: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised and rotated q, k and the untouched v, all fp32 ``[T, heads, head_dim]``."""
    t = qkv.shape[0]
    q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    rotary_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache.index_select(0, positions.long()).float().chunk(2, dim=-1)
    q = rms_norm_fp32(q.reshape(t, num_heads, head_dim), q_weight, eps)
    k = rms_norm_fp32(k.reshape(t, num_kv_heads, head_dim), k_weight, eps)
    q = apply_rotary_fp32(q, cos, sin, rotary_dim, is_neox)
    k = apply_rotary_fp32(k, cos, sin, rotary_dim, is_neox)
    return q, k, v.reshape(t, num_kv_heads, head_dim).float()


def quantize_for_cache(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> cache dtype: divide by the per-tensor scale and saturate for FP8."""
    if dtype in FP8_DTYPES:
        limit = fp8_finite_max(dtype)
        return (x / scale.float()).clamp(-limit, limit).to(dtype)
    return x.to(dtype)


def write_kv_cache_reference(
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
) -> None:
    """Write fp32 ``k``/``v`` ``[T, H, D]`` into the cache at ``slot_mapping``; slots < 0 skip."""
    _, h, d = k.shape
    geo = describe_kv_cache(key_cache, value_cache, h, d)
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    if slots.numel() and int(slots.max()) >= geo.num_slots:
        raise ValueError(f"slot_mapping holds slot {int(slots.max())} >= {geo.num_slots} slots")
    blocks, pos = slots // geo.block_size, slots % geo.block_size
    kq = quantize_for_cache(k[valid], k_scale, key_cache.dtype)
    vq = quantize_for_cache(v[valid], v_scale, value_cache.dtype)
    key_view, value_view = token_major_views(key_cache, value_cache)
    key_view[blocks, pos] = kq.reshape(kq.shape[0], h, *key_view.shape[3:])
    value_view[blocks, pos] = vq


def qk_norm_rope_cache_reference(
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
    """The whole fused operation in torch: fills ``q_out`` (and ``k_out``), writes the cache."""
    q, k, v = qk_norm_rope_fp32(
        qkv,
        positions,
        q_weight,
        k_weight,
        cos_sin_cache,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        eps=eps,
        is_neox=is_neox,
    )
    q_out.copy_(q.to(q_out.dtype).view(q_out.shape))
    if k_out is not None:
        k_out.copy_(k.to(k_out.dtype).view(k_out.shape))
    write_kv_cache_reference(k, v, key_cache, value_cache, slot_mapping, k_scale, v_scale)
