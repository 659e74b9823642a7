"""Torch reference of quick all-reduce's INT4 codec (``CodecQ4`` in vLLM's
``csrc/quickreduce/quick_reduce_impl.cuh`` and AITER), read from its source.

Layout. The HIP kernel gives each thread 8 consecutive values and quantizes across groups of
8 threads, with the two 16-bit lanes of its packed registers as separate blocks: an aligned
block of 64 values holds two groups of 32, its even positions and its odd positions.

* codes: per 8-value atom one little-endian 32-bit word ``q[0] | q[1]<<4 | q[2]<<8 |
  q[3]<<12`` over 16-bit lane pairs, i.e. bytes holding elements (0, 2), (4, 6), (1, 3),
  (5, 7) as (low, high) nibbles; 32 bytes per block;
* scales: per block (even group, odd group), two values of the input dtype ``T`` (the packed
  word the group leader stores). Per 2048-value atom row these two tensors are the two
  regions of the kernel's send buffer (1024 B of codes, then 128 B of scales).

Arithmetic, every step rounded to ``T`` as the packed half/bf16 instructions do:

* ``m`` = the group's extreme *with its sign* (its max if ``|max| > |min|``, else its min);
* scale ``s = T(m * -1/8)``: the extreme always encodes to -8 exactly, the full [-8, 7] used;
* ``e = T(1 / T(s + eps))``, ``eps`` = 0x33D7 (~1e-7) in bf16, 0x0001 (2^-24) in fp16: groups
  whose extreme is within a few hundred eps of zero lose relative precision, as on hardware;
* code ``q = rint(min(max(T(x * e), -8), 7))`` (a NaN product gives -8, the hardware max/min
  choice), nibble ``q + 8``; decoding ``T((nibble - 8) * s)``.

fp16 results saturate at +-65504 instead of overflowing, as the kernel sets the gfx942
``FP16_OVFL`` mode (it does not on other chips). The reciprocal here is correctly rounded; the
hardware one may differ in the last bit.
"""

from __future__ import annotations

import torch

BLOCK = 64  # values per block: two groups of 32
GROUP = 32
BYTES_PER_BLOCK = BLOCK // 2
SCALES_PER_BLOCK = 2
CODEC_DTYPES = (torch.bfloat16, torch.float16)
FP16_MAX = 65504.0
_EPS_BITS = {torch.bfloat16: 0x33D7, torch.float16: 0x0001}


def scale_epsilon(dtype: torch.dtype) -> float:
    """The epsilon the HIP kernel adds to the scale before its reciprocal, as a float."""
    bits = torch.tensor([_EPS_BITS[dtype]], dtype=torch.int16)
    return float(bits.view(dtype).float().item())


def saturation(dtype: torch.dtype) -> float:
    """Bound applied before rounding to ``dtype``; 0 means none (bf16 has fp32's range)."""
    return FP16_MAX if dtype == torch.float16 else 0.0


def byte_elements() -> tuple[torch.Tensor, torch.Tensor]:
    """Position in its block of the low- and high-nibble value of each of the 32 bytes."""
    j = torch.arange(BYTES_PER_BLOCK)
    lo = (j // 4) * 8 + (j % 4) // 2 + 4 * (j % 2)
    return lo, lo + 2


def _round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    sat = saturation(dtype)
    if sat:
        x = x.clamp(-sat, sat)
    return x.to(dtype).float()


def _check(x: torch.Tensor) -> None:
    if x.dtype not in CODEC_DTYPES:
        raise ValueError(f"INT4 codec takes bfloat16 or float16, got {x.dtype}")
    if x.numel() % BLOCK:
        raise ValueError(f"INT4 codec needs a multiple of {BLOCK} values, got {x.numel()}")


def int4_quantize_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(codes uint8 [numel // 2], scales [numel // 32] in x.dtype)``."""
    _check(x)
    t = x.dtype
    blocks = x.reshape(-1, BLOCK).float()
    groups = blocks.view(-1, GROUP, 2)  # [..., i, parity]: value 2i + parity
    mx, mn = groups.amax(dim=1), groups.amin(dim=1)
    extreme = torch.where(mx.abs() > mn.abs(), mx, mn)  # [blocks, 2]
    scale = _round_to(extreme * -0.125, t)
    enc = _round_to(torch.reciprocal(_round_to(scale + scale_epsilon(t), t)), t)
    per_value = enc.repeat(1, GROUP)  # position p uses group p % 2
    w = _round_to(blocks * per_value, t)
    w = torch.where(torch.isnan(w), torch.full_like(w, -8.0), w).clamp(-8.0, 7.0)
    nib = (torch.round(w) + 8).to(torch.uint8)
    lo, hi = byte_elements()
    codes = nib[:, lo] | (nib[:, hi] << 4)
    return codes.reshape(-1), scale.to(t).reshape(-1)


def int4_dequantize_reference(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Decode ``codes``/``scales`` back into a flat tensor of ``scales.dtype``."""
    if scales.dtype not in CODEC_DTYPES or codes.dtype != torch.uint8:
        raise ValueError("INT4 decode takes uint8 codes and bfloat16/float16 scales")
    if scales.numel() % SCALES_PER_BLOCK or (
        codes.numel() != scales.numel() // SCALES_PER_BLOCK * BYTES_PER_BLOCK
    ):
        raise ValueError(
            f"{codes.numel()} code bytes and {scales.numel()} scales do not describe whole "
            f"blocks of {BLOCK} values ({BYTES_PER_BLOCK} bytes and 2 scales each)"
        )
    t = scales.dtype
    c = codes.reshape(-1, BYTES_PER_BLOCK)
    s = scales.reshape(-1, SCALES_PER_BLOCK).float().repeat(1, GROUP)  # [blocks, 64]
    lo, hi = byte_elements()
    nib = torch.empty(c.shape[0], BLOCK, dtype=torch.float32, device=codes.device)
    nib[:, lo] = (c & 0xF).float()
    nib[:, hi] = (c >> 4).float()
    return _round_to((nib - 8.0) * s, t).to(t).reshape(-1)
