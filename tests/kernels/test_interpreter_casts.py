"""The interpreter fix of conftest.py: casts inside interpreted kernels equal torch's casts.

A one-line cast kernel runs over fp32 values chosen to hit every hard case (ties to even,
carries into the exponent, subnormals, saturation limits): with the fix the interpreter's
bf16/fp8 results must equal torch's bit for bit. The same kernel with Triton's own conversion
must differ, which is why the fix exists; if that assertion ever fails, upstream fixed
triton-lang/triton#8322 and the fixture can go.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from atom_tier.kernels._jit import lazy_kernel
from kernels_testlib import HAS_GPU

pytestmark = pytest.mark.skipif(HAS_GPU, reason="the interpreter is used only without a GPU")


def _cast(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m).to(y_ptr.dtype.element_ty), mask=m)


_cast_kernel = lazy_kernel(_cast)  # jitted at launch, in the mode the fixture set


def hard_values(dtype: torch.dtype) -> torch.Tensor:
    """fp32 values on, between (exact ties) and just beside pairs of adjacent ``dtype`` values."""
    limit = torch.finfo(dtype).max
    if dtype.itemsize == 1:  # every finite positive fp8 value and its successor
        codes = torch.arange(0, 0x7F, dtype=torch.int16)
    else:  # random positive bf16 bit patterns, subnormals and near-max included
        g = torch.Generator().manual_seed(0)
        codes = torch.cat(
            [
                torch.randint(0, 0x7F7F, (4000,), generator=g, dtype=torch.int16),
                torch.arange(0, 64, dtype=torch.int16),
                torch.arange(0x7F40, 0x7F7F, dtype=torch.int16),
            ]
        )
    width = torch.uint8 if dtype.itemsize == 1 else torch.int16
    lo = codes.to(width).view(dtype).float()
    hi = (codes + 1).to(width).view(dtype).float()
    ok = torch.isfinite(lo) & torch.isfinite(hi) & (hi.abs() <= limit)
    lo, hi = lo[ok], hi[ok]
    mids = (lo + hi) / 2  # exactly halfway: round-to-nearest-even decides
    vals = torch.cat([lo, mids, mids.nextafter(hi), mids.nextafter(lo), torch.tensor([limit])])
    return torch.cat([vals, -vals]).contiguous()


def interpreted_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = torch.empty(x.shape, dtype=dtype)
    _cast_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    return y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fnuz])
def test_fixed_interpreter_casts_equal_torch(dtype: torch.dtype) -> None:
    x = hard_values(dtype)
    got = interpreted_cast(x, dtype)
    want = x.to(dtype)
    bits = torch.int16 if dtype.itemsize == 2 else torch.uint8
    assert torch.equal(got.view(bits), want.view(bits))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e4m3fnuz])
def test_unfixed_interpreter_casts_are_wrong(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triton.runtime import interpreter

    original = interpreter._convert_float.original  # what conftest's fix wrapped
    monkeypatch.setattr(interpreter, "_convert_float", original)
    x = hard_values(dtype)
    bits = torch.int16 if dtype.itemsize == 2 else torch.uint8
    wrong = (interpreted_cast(x, dtype).view(bits) != x.to(dtype).view(bits)).sum()
    assert wrong > 0, "Triton's interpreter now casts correctly: drop the conftest fix"
