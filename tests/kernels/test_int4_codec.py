"""INT4 quick-reduce codec: Triton vs torch reference, wire format, round-trip error bounds.

Triton and reference must agree bit for bit (codes, scales, decoded values): both round to the
input dtype at the same steps, and the interpreter's casts are exact (conftest.py).
Round-trip bounds, with ``s`` the group's scale (|s| = |extreme| / 8) and ``u`` the unit
roundoff of the dtype (2^-8 bf16, 2^-11 fp16), for groups with ``|s| >= 256 * eps`` (below
that the kernel's epsilon dominates the scale, on hardware too) and ``|s|`` a normal number
(fp16 subnormals have fewer significant bits):
* every value: ``|x - dq| <= (1 + 8u) |s|``: a value of the sign opposite to the extreme and
  the same magnitude encodes to +8, clamped to 7 (one step), plus the decode rounding;
* values with ``x / s <= 6.9`` (not clamped): ``|x - dq| <= (0.5 + 24u) |s|``: half a step,
  plus the roundings of the encoding factor, of ``x * e`` and of the decoded product;
* the extreme itself encodes to -8 and decodes exactly.
"""

from __future__ import annotations

import pytest
import torch
from atom_tier.kernels.int4_codec import int4_dequantize_triton, int4_quantize_triton
from atom_tier.kernels.int4_reference import (
    BLOCK,
    GROUP,
    int4_dequantize_reference,
    int4_quantize_reference,
    scale_epsilon,
)

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def codec_inputs(dtype: torch.dtype, device: str) -> torch.Tensor:
    """Blocks of very different scales, zeros, subnormals, exact ties, both extreme signs."""
    g = torch.Generator().manual_seed(0)
    n = BLOCK * 96
    mags = torch.logspace(-5, 3, n // BLOCK).repeat_interleave(BLOCK)
    x = torch.randn(n, generator=g) * mags
    x[:BLOCK] = 0.0
    x[BLOCK : 2 * BLOCK] = 2.0**-20 * torch.arange(BLOCK) / BLOCK  # fp16 subnormals
    # Ties: extreme 8 -> scale -1 -> x * e lands on k + 0.5 exactly.
    ties = torch.tensor([(k % 15) - 7.5 for k in range(BLOCK)])
    ties[0], ties[1] = 8.0, -8.0
    x[2 * BLOCK : 3 * BLOCK] = ties
    x[3 * BLOCK : 4 * BLOCK] = torch.linspace(-1, 1, BLOCK) * 1000  # |max| == |min|
    return x.to(dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_codec_is_bit_exact_with_reference(dtype: torch.dtype, device: str) -> None:
    x = codec_inputs(dtype, device)
    codes, scales = int4_quantize_triton(x)
    ref_codes, ref_scales = int4_quantize_reference(x.cpu())
    assert torch.equal(codes.cpu(), ref_codes)
    assert torch.equal(scales.cpu().view(torch.int16), ref_scales.view(torch.int16))
    decoded = int4_dequantize_triton(codes, scales)
    ref_decoded = int4_dequantize_reference(ref_codes, ref_scales)
    assert torch.equal(decoded.cpu().view(torch.int16), ref_decoded.view(torch.int16))


@pytest.mark.parametrize("blocks_per_program", [4, 8, 32])
def test_tiling_does_not_change_results(blocks_per_program: int, device: str) -> None:
    x = codec_inputs(torch.bfloat16, device)[: BLOCK * 37]
    codes, scales = int4_quantize_triton(x, blocks_per_program)
    assert torch.equal(codes.cpu(), int4_quantize_reference(x.cpu())[0])
    assert torch.equal(
        int4_dequantize_triton(codes, scales, blocks_per_program).cpu(),
        int4_dequantize_reference(codes.cpu(), scales.cpu()),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_trip_error_bounds(dtype: torch.dtype) -> None:
    x = codec_inputs(dtype, "cpu")
    codes, scales = int4_quantize_reference(x)
    dq = int4_dequantize_reference(codes, scales).float().view(-1, GROUP, 2)
    xf = x.float().view(-1, GROUP, 2)  # [block, i, parity]: one group per (block, parity)
    s = scales.float().view(-1, 1, 2)
    err = (dq - xf).abs()
    u = UNIT_ROUNDOFF[dtype]
    floor = max(256 * scale_epsilon(dtype), torch.finfo(dtype).tiny)
    normal = (s.abs() >= floor).expand_as(err)
    assert normal.float().mean() > 0.8
    bound = ((1 + 8 * u) * s.abs()).expand_as(err)
    assert (err[normal] <= bound[normal]).all()
    unclamped = normal & (xf / s <= 6.9)
    tight = ((0.5 + 24 * u) * s.abs()).expand_as(err)
    assert (err[unclamped] <= tight[unclamped]).all()
    # The signed extreme of each group decodes exactly.
    extreme = s * -8
    is_extreme = (xf == extreme) & normal
    assert is_extreme.sum() >= normal[:, 0, :].sum()
    assert torch.equal(dq[is_extreme], xf[is_extreme])
    # Groups below the epsilon threshold still decode within twice their extreme.
    tiny = ~normal & (s.abs() > 0).expand_as(err)
    assert (err[tiny] <= (2 + u) * (8 * s.abs()).expand_as(err)[tiny]).all()


def test_wire_format_of_one_block() -> None:
    # Even group: extreme +8 -> scale -1 -> code -x.  Odd group: extreme -8 -> scale +1 -> x.
    even = [8.0, *[float((i % 15) - 7) for i in range(1, GROUP)]]
    odd = [-8.0, *[float((3 * i) % 15 - 7) for i in range(1, GROUP)]]
    vals = [v for pair in zip(even, odd, strict=True) for v in pair]
    codes, scales = int4_quantize_reference(torch.tensor(vals, dtype=torch.float16))
    assert scales.tolist() == [-1.0, 1.0]
    nib = [int(-v) + 8 if p % 2 == 0 else int(v) + 8 for p, v in enumerate(vals)]
    expect = b""
    for atom in range(BLOCK // 8):
        q = nib[atom * 8 : atom * 8 + 8]
        # The HIP kernel's word: 16-bit lanes (q0,q1), (q2,q3), ... as q[0] | q[1]<<4 | ...
        lanes = [q[2 * i] | q[2 * i + 1] << 16 for i in range(4)]
        word = lanes[0] | lanes[1] << 4 | lanes[2] << 8 | lanes[3] << 12
        expect += word.to_bytes(4, "little")
    assert bytes(codes.tolist()) == expect
    assert int4_dequantize_reference(codes, scales).tolist() == vals


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_all_zero_block_decodes_to_zero(dtype: torch.dtype) -> None:
    codes, scales = int4_quantize_reference(torch.zeros(BLOCK, dtype=dtype))
    # fp16: 1/eps overflows and saturates at 65504 (gfx942 FP16_OVFL), 0 * 65504 = 0 -> code 0.
    assert (codes == 0x88).all()
    assert int4_dequantize_reference(codes, scales).abs().max() == 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="multiple of 64"):
        int4_quantize_reference(torch.zeros(32, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        int4_quantize_triton(torch.zeros(64))
    with pytest.raises(ValueError, match="power of two >= 4"):
        int4_quantize_triton(torch.zeros(64, dtype=torch.bfloat16), blocks_per_program=1)
    with pytest.raises(ValueError, match="whole blocks"):
        int4_dequantize_reference(
            torch.zeros(31, dtype=torch.uint8), torch.zeros(2, dtype=torch.bfloat16)
        )
