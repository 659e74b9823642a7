"""Reference two-shot INT4 quantized all-reduce over ``torch.distributed``, with its error.

Quick all-reduce (vLLM ``VLLM_ROCM_QUICK_REDUCE_QUANTIZATION=INT4``, AITER
``AITER_QUICK_REDUCE_QUANTIZATION=INT4``) runs two shots over a single-node TP group:

1. reduce-scatter: every rank cuts its input into ``world_size`` segments, quantizes each and
   sends segment ``j`` to rank ``j``; rank ``j`` decodes the ``world_size`` copies of its
   segment and adds them in rank order, rounding to the input dtype after each add (packed
   half/bf16 adds in the HIP kernel);
2. all-gather: every rank quantizes its reduced segment and sends it to all ranks (itself
   included), and everyone decodes all segments: every rank ends with identical values.

This module does the same arithmetic with the codec of ``int4_reference.py`` (or the Triton
codec on a GPU) over any process group, e.g. gloo on CPU, and measures it against the
full-precision fp32 all-reduce of the same inputs. It exists to quantify the accuracy risk of
INT4 quick-reduce for a given tensor distribution, not to be fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from .int4_reference import (
    BLOCK,
    CODEC_DTYPES,
    GROUP,
    int4_dequantize_reference,
    int4_quantize_reference,
)

Quantize = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Dequantize = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AllReduceErrorReport:
    """Quantized vs full-precision all-reduce of one tensor, as seen on one rank."""

    world_size: int
    numel: int
    dtype: str
    max_abs_error: float
    rms_error: float
    rms_reference: float
    relative_rms_error: float
    max_abs_reference: float
    # Bytes each rank puts on the wire, both shots, against a bf16/fp16 two-shot all-reduce.
    wire_bytes_quantized: int
    wire_bytes_full: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _padded_segment(numel: int, world_size: int) -> int:
    """Segment length: whole 64-value blocks, the same for every rank (zero-padded input).

    Where the segment boundaries fall does not change any value: every value is quantized in
    its own block both times and the partial sums are added in rank order whichever rank adds
    them, so this matches the HIP kernel's per-tile segmentation number for number.
    """
    return math.ceil(numel / (world_size * BLOCK)) * BLOCK


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group: dist.ProcessGroup | None) -> None:
    # torch 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


def two_shot_int4_all_reduce(
    x: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    quantize: Quantize = int4_quantize_reference,
    dequantize: Dequantize = int4_dequantize_reference,
    cast_bf16_to_fp16: bool = True,
) -> torch.Tensor:
    """Sum ``x`` over the group through the INT4 two-shot scheme; returns a new tensor.

    ``cast_bf16_to_fp16`` mirrors vLLM's ``VLLM_ROCM_QUICK_REDUCE_CAST_BF16_TO_FP16`` (on by
    default): bf16 input is rounded to fp16, reduced with the fp16 codec, and rounded back.
    """
    if x.dtype not in CODEC_DTYPES:
        raise ValueError(f"INT4 quick all-reduce takes bfloat16 or float16, got {x.dtype}")
    if cast_bf16_to_fp16 and x.dtype == torch.bfloat16:
        out = two_shot_int4_all_reduce(x.to(torch.float16), group, quantize, dequantize, False)
        return out.to(torch.bfloat16)
    world = dist.get_world_size(group)
    seg = _padded_segment(x.numel(), world)
    flat = torch.zeros(seg * world, dtype=x.dtype, device=x.device)
    flat[: x.numel()] = x.reshape(-1)
    seg_bytes, seg_scales = seg // 2, seg // GROUP

    # Shot 1: quantize every segment, exchange so that rank j holds all copies of segment j.
    codes, scales = quantize(flat)
    recv_codes = torch.empty_like(codes)
    recv_scales = torch.empty_like(scales)
    dist.all_to_all_single(recv_codes, codes, group=group)
    dist.all_to_all_single(recv_scales, scales, group=group)
    acc: torch.Tensor | None = None
    for r in range(world):
        part = dequantize(
            recv_codes[r * seg_bytes : (r + 1) * seg_bytes],
            recv_scales[r * seg_scales : (r + 1) * seg_scales],
        )
        acc = part if acc is None else (acc.float() + part.float()).to(x.dtype)
    assert acc is not None

    # Shot 2: quantize the reduced segment once and gather every rank's.
    red_codes, red_scales = quantize(acc)
    all_codes = torch.empty(world * red_codes.numel(), dtype=red_codes.dtype, device=x.device)
    all_scales = torch.empty(world * red_scales.numel(), dtype=red_scales.dtype, device=x.device)
    _all_gather(all_codes, red_codes, group)
    _all_gather(all_scales, red_scales, group)
    out = dequantize(all_codes, all_scales)
    return out[: x.numel()].view(x.shape)


def all_reduce_error_report(
    x: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    quantize: Quantize = int4_quantize_reference,
    dequantize: Dequantize = int4_dequantize_reference,
    cast_bf16_to_fp16: bool = True,
) -> tuple[torch.Tensor, AllReduceErrorReport]:
    """Run the quantized all-reduce and compare it with an fp32 ``all_reduce`` of ``x``."""
    world = dist.get_world_size(group)
    quantized = two_shot_int4_all_reduce(x, group, quantize, dequantize, cast_bf16_to_fp16)
    exact = x.float().clone()
    dist.all_reduce(exact, group=group)
    err = quantized.float() - exact
    rms_err = float(err.square().mean().sqrt())
    rms_ref = float(exact.square().mean().sqrt())
    seg = _padded_segment(x.numel(), world)
    # Per rank and shot: (world-1) segments out; codes plus one 2-byte scale per group.
    q_seg_bytes = seg // 2 + (seg // GROUP) * 2
    report = AllReduceErrorReport(
        world_size=world,
        numel=x.numel(),
        dtype=str(x.dtype).removeprefix("torch."),
        max_abs_error=float(err.abs().max()),
        rms_error=rms_err,
        rms_reference=rms_ref,
        relative_rms_error=rms_err / rms_ref if rms_ref else 0.0,
        max_abs_reference=float(exact.abs().max()),
        wire_bytes_quantized=2 * (world - 1) * q_seg_bytes,
        wire_bytes_full=2 * (world - 1) * seg * x.element_size(),
    )
    return quantized, report


def two_shot_int4_simulated(
    inputs: list[torch.Tensor],
    quantize: Quantize = int4_quantize_reference,
    dequantize: Dequantize = int4_dequantize_reference,
    cast_bf16_to_fp16: bool = True,
) -> torch.Tensor:
    """The same arithmetic in one process, given every rank's input: what each rank returns.

    Segments do not affect any value (see ``_padded_segment``), so this works on the whole
    tensor: quantize each rank's input, decode and add in rank order, quantize the sum, decode.
    """
    dtype = inputs[0].dtype
    if cast_bf16_to_fp16 and dtype == torch.bfloat16:
        out = two_shot_int4_simulated(
            [x.to(torch.float16) for x in inputs], quantize, dequantize, False
        )
        return out.to(torch.bfloat16)
    numel = inputs[0].numel()
    padded = _padded_segment(numel, len(inputs)) * len(inputs)
    acc: torch.Tensor | None = None
    for x in inputs:
        flat = torch.zeros(padded, dtype=dtype, device=x.device)
        flat[:numel] = x.reshape(-1)
        part = dequantize(*quantize(flat))
        acc = part if acc is None else (acc.float() + part.float()).to(dtype)
    assert acc is not None
    return dequantize(*quantize(acc))[:numel].view(inputs[0].shape)


def _gloo_worker(rank: int, world: int, port: int, workdir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        x = torch.load(f"{workdir}/input{rank}.pt")
        out, report = all_reduce_error_report(x)
        torch.save({"output": out, "report": report.as_dict()}, f"{workdir}/output{rank}.pt")
    finally:
        dist.destroy_process_group()


def gloo_error_reports(
    inputs: list[torch.Tensor], workdir: str
) -> list[tuple[torch.Tensor, AllReduceErrorReport]]:
    """Spawn ``len(inputs)`` CPU processes on gloo, one input each; each rank's result."""
    import socket

    import torch.multiprocessing as mp

    for rank, x in enumerate(inputs):
        torch.save(x.cpu(), f"{workdir}/input{rank}.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_gloo_worker, args=(len(inputs), port, workdir), nprocs=len(inputs))
    results = []
    for rank in range(len(inputs)):
        saved = torch.load(f"{workdir}/output{rank}.pt")
        results.append((saved["output"], AllReduceErrorReport(**saved["report"])))
    return results


def main(argv: list[str] | None = None) -> None:
    """``python -m atom_tier.kernels.quick_allreduce``: error report for Gaussian inputs."""
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--world-size", type=int, default=4, choices=(2, 4, 8))
    p.add_argument("--numel", type=int, default=1 << 16)
    p.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(args.numel, generator=g).to(getattr(torch, args.dtype))
        for _ in range(args.world_size)
    ]
    with tempfile.TemporaryDirectory() as workdir:
        _, report = gloo_error_reports(inputs, workdir)[0]
    for key, value in report.as_dict().items():
        print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
