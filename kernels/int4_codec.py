"""Triton INT4 codec in the quick all-reduce format (see ``int4_reference.py``).

Each program handles ``BLOCKS`` blocks of 64 values. Values are loaded and stored in natural
order (coalesced); the wire order of the nibbles is produced in registers (reshape, permute,
split) when encoding and by gathering bytes when decoding. Intermediate values are rounded to
the input dtype at the same steps as the HIP kernel; ``rint`` is written out (round half to
even) because ``libdevice.rint`` has no interpreter implementation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import lazy_kernel
from .int4_reference import (
    BLOCK,
    BYTES_PER_BLOCK,
    CODEC_DTYPES,
    SCALES_PER_BLOCK,
    saturation,
    scale_epsilon,
)


@triton.jit
def _round_to(x, t: tl.constexpr, SAT: tl.constexpr):
    """Round fp32 ``x`` to ``t`` and back; fp16 saturates (the gfx942 FP16_OVFL mode)."""
    if SAT > 0:
        x = tl.minimum(tl.maximum(x, -SAT), SAT)
    return x.to(t).to(tl.float32)


@triton.jit
def _group_scale(mx, mn, t: tl.constexpr, SAT: tl.constexpr):
    """``T(m * -1/8)`` for the group's signed extreme ``m``."""
    extreme = tl.where(tl.abs(mx) > tl.abs(mn), mx, mn)
    return _round_to(extreme * -0.125, t, SAT)


@triton.jit
def _nibble(x, enc, t: tl.constexpr, SAT: tl.constexpr):
    w = _round_to(x * enc, t, SAT)
    # The HIP kernel's packed max/min return -8 for a NaN product.
    w = tl.where(w != w, -8.0, w)
    w = tl.minimum(tl.maximum(w, -8.0), 7.0)
    r = tl.floor(w + 0.5)
    # floor(w + 0.5) rounds ties up; round them to even instead, as rint does.
    tie_odd = ((r - w) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0)
    r = tl.where(tie_odd, r - 1.0, r)
    return (r + 8.0).to(tl.int32)


def _int4_quantize_kernel(
    x_ptr,
    codes_ptr,
    scales_ptr,
    num_blocks,
    eps,
    SAT: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    # Coalesced loads in natural order; the wire order is made in registers: value e of an
    # 8-value atom, e = 4h + 2n + p, goes to byte 2p + h of the atom's word, nibble n.
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    b_ok = blocks < num_blocks
    blocks64 = blocks.to(tl.int64)
    p = tl.arange(0, 64)
    x = tl.load(x_ptr + blocks64[:, None] * 64 + p[None, :], mask=b_ok[:, None], other=0.0)
    t = x.dtype
    g = tl.reshape(x.to(tl.float32), [BLOCKS, 32, 2])  # [block, i, parity]: value 2i + parity
    scale = _group_scale(tl.max(g, axis=1), tl.min(g, axis=1), t, SAT)  # [block, parity]
    enc = _round_to(tl.div_rn(1.0, _round_to(scale + eps, t, SAT)), t, SAT)
    nib = _nibble(g, enc[:, None, :], t, SAT)  # [block, i, parity]
    nib = tl.reshape(nib, [BLOCKS, 8, 2, 2, 2])  # [block, atom, h, n, p]
    nib = tl.reshape(tl.permute(nib, (0, 1, 4, 2, 3)), [BLOCKS, 32, 2])  # [block, byte, n]
    lo, hi = tl.split(nib)
    packed = (lo | (hi << 4)).to(tl.uint8)
    j = tl.arange(0, 32)
    tl.store(codes_ptr + blocks64[:, None] * 32 + j[None, :], packed, mask=b_ok[:, None])
    k = tl.arange(0, 2)
    tl.store(scales_ptr + blocks64[:, None] * 2 + k[None, :], scale.to(t), mask=b_ok[:, None])


def _int4_dequantize_kernel(
    codes_ptr,
    scales_ptr,
    out_ptr,
    num_blocks,
    SAT: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    # Output in natural order (coalesced stores); each value gathers its byte: value e of an
    # 8-value atom sits in byte 2*(e % 2) + e // 4 of the atom's word, high nibble if bit 1
    # of e is set.
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)
    b_ok = blocks < num_blocks
    p = tl.arange(0, 64)
    e = p % 8
    byte = (p // 8) * 4 + 2 * (e % 2) + e // 4
    shift = 4 * ((e // 2) % 2)
    blocks64 = blocks.to(tl.int64)
    mask = b_ok[:, None]
    packed = tl.load(codes_ptr + blocks64[:, None] * 32 + byte[None, :], mask=mask, other=0).to(
        tl.int32
    )
    nib = (packed >> shift[None, :]) & 15
    s_even = tl.load(scales_ptr + blocks64 * 2, mask=b_ok, other=0.0)
    s_odd = tl.load(scales_ptr + blocks64 * 2 + 1, mask=b_ok, other=0.0)
    t = s_even.dtype
    odd = (p % 2) == 1
    s = tl.where(odd[None, :], s_odd.to(tl.float32)[:, None], s_even.to(tl.float32)[:, None])
    out = _round_to((nib.to(tl.float32) - 8.0) * s, t, SAT)
    tl.store(out_ptr + blocks64[:, None] * 64 + p[None, :], out.to(t), mask=mask)


int4_quantize_kernel = lazy_kernel(_int4_quantize_kernel)
int4_dequantize_kernel = lazy_kernel(_int4_dequantize_kernel)

# 32 blocks = 2048 values per program: one atom row of the HIP kernel's tile. The interpreter
# pays per program, so the same size keeps CPU test runs short.
DEFAULT_BLOCKS = 32


def _check_blocks(blocks_per_program: int) -> None:
    # Triton 3.6 on sm_90 miscompiled the reshape/permute/split of the encoder for a single
    # block per program (seen on an H100; the interpreter was right), so tiles start at 4.
    if blocks_per_program < 4 or blocks_per_program & (blocks_per_program - 1):
        raise ValueError(
            f"blocks_per_program must be a power of two >= 4, got {blocks_per_program}"
        )


def _check_values(x: torch.Tensor) -> None:
    if x.dtype not in CODEC_DTYPES:
        raise ValueError(f"INT4 codec takes bfloat16 or float16, got {x.dtype}")
    if x.numel() % BLOCK:
        raise ValueError(f"INT4 codec needs a multiple of {BLOCK} values, got {x.numel()}")


def int4_quantize_triton(
    x: torch.Tensor, blocks_per_program: int = DEFAULT_BLOCKS, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton quantize: ``(codes uint8 [numel // 2], scales [numel // 32] in x.dtype)``."""
    _check_values(x)
    _check_blocks(blocks_per_program)
    flat = x.reshape(-1).contiguous()
    num_blocks = flat.numel() // BLOCK
    codes = torch.empty(num_blocks * BYTES_PER_BLOCK, dtype=torch.uint8, device=x.device)
    scales = torch.empty(num_blocks * SCALES_PER_BLOCK, dtype=x.dtype, device=x.device)
    if num_blocks:
        int4_quantize_kernel[(triton.cdiv(num_blocks, blocks_per_program),)](
            flat,
            codes,
            scales,
            num_blocks,
            scale_epsilon(x.dtype),
            SAT=saturation(x.dtype),
            BLOCKS=blocks_per_program,
            num_warps=num_warps,
            enable_fp_fusion=False,
        )
    return codes, scales


def int4_dequantize_triton(
    codes: torch.Tensor,
    scales: torch.Tensor,
    blocks_per_program: int = DEFAULT_BLOCKS,
    num_warps: int = 4,
) -> torch.Tensor:
    """Triton decode into a flat tensor of ``scales.dtype``."""
    _check_blocks(blocks_per_program)
    if scales.dtype not in CODEC_DTYPES or codes.dtype != torch.uint8:
        raise ValueError("INT4 decode takes uint8 codes and bfloat16/float16 scales")
    num_blocks = scales.numel() // SCALES_PER_BLOCK
    if scales.numel() % SCALES_PER_BLOCK or codes.numel() != num_blocks * BYTES_PER_BLOCK:
        raise ValueError(
            f"{codes.numel()} code bytes and {scales.numel()} scales do not describe whole "
            f"blocks of {BLOCK} values ({BYTES_PER_BLOCK} bytes and 2 scales each)"
        )
    out = torch.empty(num_blocks * BLOCK, dtype=scales.dtype, device=scales.device)
    if num_blocks:
        int4_dequantize_kernel[(triton.cdiv(num_blocks, blocks_per_program),)](
            codes.reshape(-1).contiguous(),
            scales.reshape(-1).contiguous(),
            out,
            num_blocks,
            SAT=saturation(scales.dtype),
            BLOCKS=blocks_per_program,
            num_warps=num_warps,
            enable_fp_fusion=False,
        )
    return out
