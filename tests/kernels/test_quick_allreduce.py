"""Two-shot INT4 quick all-reduce over gloo: 2 and 4 real CPU processes, spawned here.

Checks that every rank ends with the same tensor, that it equals the single-process
simulation of the same arithmetic (so the collectives move the right bytes), that the error
stays within what the codec's per-element bounds add up to, and that the report's figures are
the ones measured. The figures are printed (pytest -s) as the error report.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from atom_tier.kernels.int4_reference import GROUP, int4_quantize_reference
from atom_tier.kernels.quick_allreduce import gloo_error_reports, two_shot_int4_simulated

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def scale_per_value(x: torch.Tensor) -> torch.Tensor:
    """|scale| of the group each value of ``x`` (a multiple of 64 values) falls in."""
    _, scales = int4_quantize_reference(x)
    return scales.float().abs().view(-1, 1, 2).expand(-1, GROUP, 2).reshape(-1)


@pytest.mark.parametrize(("world", "dtype"), [(2, torch.float16), (4, torch.bfloat16)])
def test_two_shot_int4_all_reduce_over_gloo(world: int, dtype: torch.dtype, tmp_path: Path) -> None:
    numel = 64 * 100 - 40  # not a multiple of world * 64: exercises the padding
    g = torch.Generator().manual_seed(world)
    # Per-rank activations of different magnitudes, like partial sums of a row-parallel GEMM.
    inputs = [(torch.randn(numel, generator=g) * (1 + r)).to(dtype) for r in range(world)]
    results = gloo_error_reports(inputs, str(tmp_path))

    outputs = [out for out, _ in results]
    for out in outputs[1:]:
        assert torch.equal(out.view(torch.int16), outputs[0].view(torch.int16))
    simulated = two_shot_int4_simulated(inputs)
    assert torch.equal(outputs[0].view(torch.int16), simulated.view(torch.int16))

    # Error bound per value, in the codec's dtype (bf16 input is cast to fp16 by default, which
    # is exact for these magnitudes; the result is cast back, one bf16 rounding):
    # shot 1 adds each rank's codec error (1 + 8u)|s_r| and (world - 1) roundings of partial
    # sums bounded by the sum of |decoded values|; shot 2 adds (1 + 8u)|s_sum|, where s_sum is
    # the scale of the reduced group, read off the fp16 result (its extreme decodes exactly).
    u = UNIT_ROUNDOFF[torch.float16]
    exact = torch.stack([x.float() for x in inputs]).sum(0)
    padded = -(-numel // (world * 64)) * world * 64
    cast = [torch.nn.functional.pad(x.to(torch.float16), (0, padded - numel)) for x in inputs]
    per_rank = sum(scale_per_value(x) for x in cast)
    partial = torch.stack([x.float() for x in cast]).abs().sum(0)
    out16 = two_shot_int4_simulated(cast)
    bound = (
        (1 + 8 * u) * (per_rank + scale_per_value(out16))
        + (world - 1) * u * (partial + (1 + 8 * u) * per_rank)
    )[:numel]
    if dtype == torch.bfloat16:
        bound = bound + UNIT_ROUNDOFF[dtype] * out16[:numel].float().abs()
    err = (outputs[0].float() - exact).abs()
    assert (err <= bound).all()

    report = results[0][1]
    assert report.world_size == world and report.numel == numel
    assert report.max_abs_error == pytest.approx(float(err.max()))
    rms = float((outputs[0].float() - exact).square().mean().sqrt())
    assert report.rms_error == pytest.approx(rms, rel=1e-6)
    assert report.relative_rms_error == pytest.approx(
        rms / float(exact.square().mean().sqrt()), rel=1e-6
    )
    assert 0 < report.relative_rms_error < 0.25
    assert report.wire_bytes_quantized < report.wire_bytes_full / 3
    print(f"\nINT4 two-shot all-reduce, {world} ranks, {dtype}: {report.as_dict()}")
