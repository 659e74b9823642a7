"""Ahead-of-time builds of every kernel variant for AMD GPUs, on a machine without one.

``triton.compile(ASTSource(...), target=GPUTarget("hip", arch, 64))`` runs Triton's whole
AMD pipeline (TTIR -> TTGIR -> LLVM IR -> AMDGCN -> hsaco) on CPU. CI uses it to prove every
variant builds for gfx942 (MI300X) and gfx950 (MI355X) and to read the instructions chosen.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .int4_codec import DEFAULT_BLOCKS, int4_dequantize_kernel, int4_quantize_kernel
from .int4_reference import saturation
from .qk_norm_rope_cache import (
    LaunchConfig,
    default_launch,
    kernel_constexprs,
    qk_norm_rope_cache_kernel,
)

AMD_ARCHS = ("gfx942", "gfx950")
HEAD_DIMS = (64, 96, 128, 192, 256)
MODEL_DTYPES = (torch.bfloat16, torch.float16)
FP8_CACHE_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
# Tokens per program the launcher picks: 1 for decode-sized batches, 4 above.
BLOCK_TS = (1, 4)

_TL_NAMES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float8_e4m3fn: "fp8e4nv",
    torch.float8_e4m3fnuz: "fp8e4b8",
}


@dataclass(frozen=True)
class FusedVariant:
    dtype: torch.dtype
    cache_dtype: torch.dtype
    is_neox: bool
    head_dim: int
    paged: bool
    block_t: int

    @property
    def key_x(self) -> int:
        return 16 // self.cache_dtype.itemsize if self.paged else 0

    @property
    def num_warps(self) -> int:
        """The warps the launcher would pick for this variant."""
        return default_launch(1024, self.head_dim, LaunchConfig(block_t=self.block_t))[1]

    def name(self) -> str:
        return (
            f"qk_norm_rope_cache[{_TL_NAMES[self.dtype]},{_TL_NAMES[self.cache_dtype]},"
            f"{'neox' if self.is_neox else 'gptj'},d{self.head_dim},"
            f"{'paged' if self.paged else 'flash'},t{self.block_t}]"
        )


def fused_variants() -> Iterator[FusedVariant]:
    """Every constexpr combination the launcher can produce (FP8 caches and unquantized)."""
    for dtype, is_neox, head_dim, paged, block_t in itertools.product(
        MODEL_DTYPES, (True, False), HEAD_DIMS, (False, True), BLOCK_TS
    ):
        for cache_dtype in (*FP8_CACHE_DTYPES, dtype):
            yield FusedVariant(dtype, cache_dtype, is_neox, head_dim, paged, block_t)


def fused_source(v: FusedVariant) -> ASTSource:
    fn = qk_norm_rope_cache_kernel.compiled_function()
    t, c = _TL_NAMES[v.dtype], _TL_NAMES[v.cache_dtype]
    pointers = {
        "qkv_ptr": t,
        "positions_ptr": "i64",
        "q_weight_ptr": t,
        "k_weight_ptr": t,
        "cos_sin_ptr": t,
        "q_out_ptr": t,
        "k_out_ptr": t,
        "key_cache_ptr": c,
        "value_cache_ptr": c,
        "slot_mapping_ptr": "i64",
        "k_scale_ptr": "fp32",
        "v_scale_ptr": "fp32",
    }
    constexprs = kernel_constexprs(v.head_dim, v.is_neox, v.key_x, v.cache_dtype, True, v.block_t)
    signature: dict[str, str] = {}
    for name in fn.arg_names:
        if name in pointers:
            signature[name] = "*" + pointers[name]
        elif name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = "fp32" if name == "eps" else "i32"
    return ASTSource(fn, signature, constexprs=constexprs)


def int4_sources() -> Iterator[tuple[str, ASTSource]]:
    for dtype in MODEL_DTYPES:
        t, sat = _TL_NAMES[dtype], saturation(dtype)
        q = int4_quantize_kernel.compiled_function()
        yield (
            f"int4_quantize[{t}]",
            ASTSource(
                q,
                {
                    "x_ptr": "*" + t,
                    "codes_ptr": "*u8",
                    "scales_ptr": "*" + t,
                    "num_blocks": "i32",
                    "eps": "fp32",
                    "SAT": "constexpr",
                    "BLOCKS": "constexpr",
                },
                constexprs={"SAT": sat, "BLOCKS": DEFAULT_BLOCKS},
            ),
        )
        d = int4_dequantize_kernel.compiled_function()
        yield (
            f"int4_dequantize[{t}]",
            ASTSource(
                d,
                {
                    "codes_ptr": "*u8",
                    "scales_ptr": "*" + t,
                    "out_ptr": "*" + t,
                    "num_blocks": "i32",
                    "SAT": "constexpr",
                    "BLOCKS": "constexpr",
                },
                constexprs={"SAT": sat, "BLOCKS": DEFAULT_BLOCKS},
            ),
        )


def compile_for(src: ASTSource, arch: str, num_warps: int = 4) -> Any:
    """Build ``src`` for an AMD ``arch`` (wave64); the result's ``.asm["amdgcn"]`` is text."""
    return triton.compile(
        src,
        target=GPUTarget("hip", arch, 64),
        options={"num_warps": num_warps, "enable_fp_fusion": False},
    )


_FP8_CVT = re.compile(r"\bv_cvt_\w*fp8\w*")


@dataclass(frozen=True)
class BuildResult:
    name: str
    arch: str
    hsaco_bytes: int
    fp8_conversions: tuple[str, ...]  # distinct v_cvt_*fp8* instructions in the AMDGCN


def _result(name: str, arch: str, kernel: Any) -> BuildResult:
    cvts = tuple(sorted(set(_FP8_CVT.findall(kernel.asm["amdgcn"]))))
    return BuildResult(name, arch, len(kernel.asm["hsaco"]), cvts)


def build_fused(job: tuple[FusedVariant, str]) -> BuildResult:
    variant, arch = job
    return _result(
        variant.name(), arch, compile_for(fused_source(variant), arch, variant.num_warps)
    )


def build_int4(arch: str) -> list[BuildResult]:
    return [_result(name, arch, compile_for(src, arch)) for name, src in int4_sources()]


def build_int4_in_child(arch: str) -> list[BuildResult]:
    """``build_int4`` in a fresh process. A process that has run kernels in Triton's
    interpreter can keep ``triton.language`` patched for it (Triton 3.9's
    ``InterpretedFunction.__call__``, the device-function path, never restores what
    ``_patch_lang`` changed), and compiling there fails unless Triton's cache already holds
    the kernel."""
    ctx = multiprocessing.get_context("spawn")
    with _children_compile(), ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(build_int4, arch).result()


@contextlib.contextmanager
def _children_compile() -> Iterator[None]:
    """Spawned builders must import Triton in compiled mode whatever this process runs in:
    the knob also sets ``TRITON_INTERPRET``, which children inherit."""
    previous = triton.knobs.runtime.interpret
    triton.knobs.runtime.interpret = False
    try:
        yield
    finally:
        triton.knobs.runtime.interpret = previous


def build_all(variants: Iterable[FusedVariant], arch: str, workers: int) -> list[BuildResult]:
    """Build variants in ``workers`` fresh processes (compilation is single-threaded)."""
    jobs = [(v, arch) for v in variants]
    if workers <= 1:
        return [build_fused(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")
    with _children_compile(), ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(build_fused, jobs, chunksize=8))
