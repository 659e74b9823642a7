"""Inputs and comparisons shared by the kernel tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
HAS_GPU = torch.cuda.is_available()


@dataclass
class FusedCase:
    qkv: torch.Tensor
    positions: torch.Tensor
    q_weight: torch.Tensor
    k_weight: torch.Tensor
    cos_sin_cache: torch.Tensor
    slot_mapping: torch.Tensor
    k_scale: torch.Tensor
    v_scale: torch.Tensor
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float = 1e-6

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.qkv, self.positions, self.q_weight, self.k_weight, self.cos_sin_cache)


def rope_table(
    max_pos: int, rotary_dim: int, dtype: torch.dtype, base: float = 10000.0
) -> torch.Tensor:
    """``[max_pos, rotary_dim]`` = ``[cos | sin]``, vLLM's ``cos_sin_cache`` format."""
    inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    ang = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)
    return torch.cat((ang.cos(), ang.sin()), dim=-1).to(dtype)


def make_case(
    *,
    head_dim: int,
    dtype: torch.dtype,
    rotary_dim: int | None = None,
    num_tokens: int = 7,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    num_slots: int = 64,
    device: str = "cpu",
    seed: int = 0,
) -> FusedCase:
    """Random inputs; k/v scales chosen so some values saturate the FP8 range."""
    g = torch.Generator().manual_seed(seed)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    # Channels of different magnitude, as real q/k projections have, plus outliers.
    qkv = torch.randn(num_tokens, width, generator=g) * (0.5 + 4 * torch.rand(width, generator=g))
    slots = torch.randperm(num_slots, generator=g)[:num_tokens]
    if num_tokens > 1:
        slots[1] = -1  # a padded token: must not be written
    case = FusedCase(
        qkv=qkv.to(dtype),
        positions=torch.randint(0, 4096, (num_tokens,), generator=g),
        q_weight=(0.5 + torch.rand(head_dim, generator=g)).to(dtype),
        k_weight=(0.5 + torch.rand(head_dim, generator=g)).to(dtype),
        cos_sin_cache=rope_table(4096, rotary_dim or head_dim, dtype),
        slot_mapping=slots,
        k_scale=torch.tensor([0.008], dtype=torch.float32),
        v_scale=torch.tensor([0.02], dtype=torch.float32),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
    )
    for name, value in vars(case).items():
        if isinstance(value, torch.Tensor):
            setattr(case, name, value.to(device))
    return case


def empty_cache(
    shape: tuple[int, ...], dtype: torch.dtype, device: str, fill: int = 0x11
) -> torch.Tensor:
    """A cache prefilled with a byte pattern, so untouched slots are detectable."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    raw = torch.full((nbytes,), fill, dtype=torch.uint8, device=device)
    return raw.view(dtype).view(shape)


def make_caches(
    layout: str,
    dtype: torch.dtype,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    device: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if layout == "flash":
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        return empty_cache(shape, dtype, device), empty_cache(shape, dtype, device)
    x = 16 // dtype.itemsize
    return (
        empty_cache((num_blocks, num_kv_heads, head_dim // x, block_size, x), dtype, device),
        empty_cache((num_blocks, num_kv_heads, head_dim, block_size), dtype, device),
    )


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Map float bit patterns to integers whose difference counts representable steps."""
    bits = {1: torch.int8, 2: torch.int16}[t.element_size()]
    v = t.contiguous().view(bits).to(torch.int64)
    mag = v & ((1 << (8 * t.element_size() - 1)) - 1)
    return torch.where(v < 0, -mag, mag)


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Same dtype, no NaN, >= 99% bit-identical, and every value either at most one step of
    the stored format from the reference or within 2^-20 of the tensor's largest magnitude.

    Kernel and reference make the same IEEE operations except the order of the fp32 sum of
    squares (and, on a GPU, torch's approximate rsqrt): the fp32 results differ by a few fp32
    ulps of the operands. Rounded to bf16/fp16/fp8 that is at most one step, or nothing,
    except where ``n*cos - p*sin`` cancels to nearly zero: there a few fp32 ulps of the
    operands are many steps of the tiny result (seen on an H100: 4 values in 4M), but still
    far below 2^-20 of the largest value, 4000 times finer than a bf16 step at that value.
    """
    assert actual.dtype == expected.dtype, what
    assert actual.shape == expected.shape, what
    if actual.numel() == 0:
        return
    a, b = actual.float(), expected.float()
    assert not torch.isnan(a).any(), f"{what}: NaN in kernel output"
    assert not torch.isnan(b).any(), f"{what}: NaN in reference output"
    steps = (ordered_bits(actual) - ordered_bits(expected)).abs()
    near = (a - b).abs() <= 2.0**-20 * float(b.abs().max())
    far = (steps > 1) & ~near
    assert not far.any(), (
        f"{what}: {int(far.sum())} values off by up to {int(steps[far].max())} steps, "
        f"e.g. {a[far][:3].tolist()} vs {b[far][:3].tolist()}"
    )
    same = float((steps == 0).float().mean())
    assert same >= 0.99, f"{what}: only {same:.4f} bit-identical"
