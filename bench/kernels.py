"""Benchmark the Triton kernels on a GPU: GB/s against the device's memory bandwidth, and the
fused QK-norm + RoPE + FP8 cache write against the unfused torch sequence (eager and
torch.compile). Prints the machine first. Needs a CUDA or ROCm GPU.

    python bench/kernels.py [--quick]

Bytes counted per fused call: qkv read, cos/sin rows, positions and slots read, q (and k)
written, k and v written to the FP8 cache; weights are negligible and not counted. Timings are
CUDA-graph replays (``triton.testing.do_bench_cudagraph``), so launch overhead, which vLLM also
hides in graphs for decode, does not count; medians of the replays.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph as _do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
from atom_tier.kernels import int4_dequantize, int4_quantize
from atom_tier.kernels.int4_codec import int4_dequantize_triton, int4_quantize_triton
from atom_tier.kernels.int4_reference import int4_dequantize_reference, int4_quantize_reference
from atom_tier.kernels.qk_norm_rope_cache import (
    LaunchConfig,
    qk_norm_rope_cache_triton,
)
from atom_tier.kernels.reference import (
    qk_norm_rope_cache_reference,
    qk_norm_rope_fp32,
    quantize_for_cache,
)
from kernels_testlib import assert_matches_reference, make_caches, make_case

# (label, num_heads, num_kv_heads, head_dim, rotary_dim): per-GPU shapes of common models.
SHAPES = [
    ("Llama-3-8B TP1", 32, 8, 128, 128),
    ("Qwen3-32B TP4", 16, 2, 128, 128),
    ("Llama-3-70B TP8", 8, 1, 128, 128),
    ("head_dim 64", 32, 8, 64, 64),
    ("Phi-3 head_dim 96", 32, 32, 96, 96),
    ("head_dim 192, rot 64", 16, 16, 192, 64),
    ("Gemma head_dim 256", 8, 4, 256, 256),
]
TOKENS = [64, 1024, 8192]
CACHE_DTYPE = torch.float8_e4m3fn if torch.version.hip is None else torch.float8_e4m3fnuz
# Spec-sheet HBM bandwidth, GB/s, by device-name substring (for the "% of spec" column).
SPEC_GBS = {
    "H100 80GB HBM3": 3350,
    "H100 NVL": 3900,
    "H200": 4800,
    "MI300X": 5300,
    "MI325X": 6000,
    "MI355X": 8000,
}


def do_bench_cudagraph(fn: Callable[[], object]) -> float:
    """Median milliseconds of CUDA-graph replays of ``fn``."""
    return float(_do_bench_cudagraph(fn, return_mode="median"))


def spec_bandwidth() -> float | None:
    name = torch.cuda.get_device_properties(0).name
    return next((v for k, v in SPEC_GBS.items() if k in name), None)


def machine() -> str:
    p = torch.cuda.get_device_properties(0)
    runtime = f"HIP {torch.version.hip}" if torch.version.hip else f"CUDA {torch.version.cuda}"
    lines = [
        f"GPU: {p.name}, {p.multi_processor_count} SMs/CUs, {p.total_memory / 2**30:.0f} GiB",
        f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{runtime}, "
        f"python {platform.python_version()}, host {platform.node()}",
    ]
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.max.memory", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        lines.append(f"nvidia-smi: driver, max memory clock: {smi.stdout.strip()}")
    except (OSError, subprocess.SubprocessError):
        pass
    return "\n".join(lines)


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written): the achievable peak."""
    src = torch.empty(1 << 29, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench_cudagraph(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / ms / 1e6


def unfused_torch(
    qkv, positions, qw, kw, cos_sin, kc, vc, slots, ks, vs, q_out, *, nh, nkv, hd, is_neox
):  # type: ignore[no-untyped-def]
    """The same math as separate torch ops (all slots valid, so torch.compile needs no
    data-dependent shapes)."""
    q, k, v = qk_norm_rope_fp32(
        qkv,
        positions,
        qw,
        kw,
        cos_sin,
        num_heads=nh,
        num_kv_heads=nkv,
        head_dim=hd,
        eps=1e-6,
        is_neox=is_neox,
    )
    q_out.copy_(q.to(q_out.dtype))
    blk, pos = slots // kc.shape[1], slots % kc.shape[1]
    kc[blk, pos] = quantize_for_cache(k, ks, kc.dtype)
    vc[blk, pos] = quantize_for_cache(v, vs, vc.dtype)


def bench_fused(
    label: str,
    nh: int,
    nkv: int,
    hd: int,
    rot: int,
    tokens: int,
    peak: float,
    spec: float | None,
    compiled_cache: dict[str, Callable[..., None]],
) -> None:
    num_blocks = -(-tokens // 16) + 1
    case = make_case(
        head_dim=hd,
        rotary_dim=rot,
        dtype=torch.bfloat16,
        num_heads=nh,
        num_kv_heads=nkv,
        num_tokens=tokens,
        num_slots=num_blocks * 16,
        device="cuda",
    )
    case.slot_mapping = torch.randperm(num_blocks * 16, device="cuda")[:tokens]
    kc, vc = make_caches("flash", CACHE_DTYPE, num_blocks, 16, nkv, hd, "cuda")
    q = torch.empty(tokens, nh, hd, dtype=torch.bfloat16, device="cuda")
    args = (*case.tensors(), kc, vc, case.slot_mapping, case.k_scale, case.v_scale, q)
    kw = {"num_heads": nh, "num_kv_heads": nkv, "head_dim": hd, "eps": case.eps, "is_neox": True}

    # Correctness first, against the reference on the same GPU.
    kc2, vc2, q2 = kc.clone(), vc.clone(), q.clone()
    qk_norm_rope_cache_triton(*args, None, **kw)
    qk_norm_rope_cache_reference(
        *case.tensors(), kc2, vc2, case.slot_mapping, case.k_scale, case.v_scale, q2, None, **kw
    )
    for got, want, what in ((q, q2, "q"), (kc, kc2, "k cache"), (vc, vc2, "v cache")):
        try:
            assert_matches_reference(got, want, f"{label} T={tokens} {what}")
        except AssertionError as exc:
            print(f"| {label} | {tokens} | MISMATCH: {exc} |", flush=True)
            return

    nbytes = tokens * ((nh + 2 * nkv) * hd * 2 + rot * 2 + 16 + nh * hd * 2 + 2 * nkv * hd)
    timings: dict[str, float] = {}
    for block_t, warps in ((1, 1), (1, 2), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4), (8, 8)):
        timings[f"t{block_t}w{warps}"] = do_bench_cudagraph(
            lambda b=block_t, w=warps: qk_norm_rope_cache_triton(
                *args, None, **kw, launch=LaunchConfig(block_t=b, num_warps=w)
            )
        )
    default = do_bench_cudagraph(lambda: qk_norm_rope_cache_triton(*args, None, **kw))
    ukw = {"nh": nh, "nkv": nkv, "hd": hd, "is_neox": True}
    eager = do_bench_cudagraph(lambda: unfused_torch(*args, **ukw))
    key = f"{nh}/{nkv}/{hd}/{rot}"
    if key not in compiled_cache:
        compiled_cache[key] = torch.compile(unfused_torch, dynamic=True, fullgraph=True)
    compiled = compiled_cache[key]
    compiled(*args, **ukw)
    comp = do_bench_cudagraph(lambda: compiled(*args, **ukw))
    best_name = min(timings, key=timings.__getitem__)
    gbs = nbytes / default / 1e6
    spec_pct = f"{100 * gbs / spec:.0f}%" if spec else "n/a"
    print(
        f"| {label} | {tokens} | {default * 1e3:.1f} | {gbs:.0f} | {100 * gbs / peak:.0f}% | "
        f"{spec_pct} | "
        f"{best_name} {timings[best_name] * 1e3:.1f} | {eager * 1e3:.1f} "
        f"({eager / default:.1f}x) | {comp * 1e3:.1f} ({comp / default:.1f}x) |",
        flush=True,
    )


def bench_int4(peak: float) -> None:
    """Quantize and dequantize 64 Mi values; bytes = values + codes + scales."""
    tiles = [(32, 4), (64, 4), (64, 8), (128, 8)]
    print(
        "| codec | tile (blocks, warps) | quantize us | GB/s | % of copy | dequantize us "
        "| GB/s | % of copy |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.randn(1 << 26, dtype=dtype, device="cuda")
        codes, scales = int4_quantize(x)
        head = x[: 1 << 20]  # check a slice against the torch reference on the CPU
        ref_codes, ref_scales = int4_quantize_reference(head.cpu())
        assert torch.equal(ref_codes, codes[: 1 << 19].cpu())
        assert torch.equal(
            int4_dequantize(codes, scales)[: 1 << 20].cpu(),
            int4_dequantize_reference(ref_codes, ref_scales),
        )
        nbytes = x.numel() * 2 + codes.numel() + scales.numel() * 2
        for blocks, warps in tiles:
            q_ms = do_bench_cudagraph(lambda x=x, b=blocks, w=warps: int4_quantize_triton(x, b, w))
            d_ms = do_bench_cudagraph(
                lambda c=codes, s=scales, b=blocks, w=warps: int4_dequantize_triton(c, s, b, w)
            )
            qg, dg = nbytes / q_ms / 1e6, nbytes / d_ms / 1e6
            print(
                f"| int4 {str(dtype)[6:]} | {blocks}, {warps} | {q_ms * 1e3:.0f} | {qg:.0f} "
                f"| {100 * qg / peak:.0f}% | {d_ms * 1e3:.0f} | {dg:.0f} "
                f"| {100 * dg / peak:.0f}% |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="first three shapes only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA or ROCm GPU; none is visible")
    print(machine())
    peak, spec = copy_bandwidth(), spec_bandwidth()
    print(
        f"device-to-device copy: {peak:.0f} GB/s (read + write); spec sheet: "
        f"{spec or 'unknown'} GB/s\n"
    )
    print(
        "| shape | tokens | fused us | GB/s | % of copy | % of spec | best tile us "
        "| eager unfused us | compiled unfused us |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    compiled: dict[str, Callable[..., None]] = {}
    for label, nh, nkv, hd, rot in SHAPES[:3] if args.quick else SHAPES:
        for tokens in TOKENS:
            bench_fused(label, nh, nkv, hd, rot, tokens, peak, spec, compiled)
    print()
    bench_int4(peak)


if __name__ == "__main__":
    main()
