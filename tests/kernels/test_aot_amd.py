"""Every kernel variant builds for gfx942 (MI300X) and gfx950 (MI355X), on this CPU-only machine.

``triton.compile`` runs Triton's whole AMD pipeline down to a code object (hsaco) without a
GPU. On top of "it builds", the AMDGCN text is checked for the FP8 conversions: gfx942's
e4m3fnuz path must use the hardware ``v_cvt_pk_fp8_f32`` (not a software bit-twiddling
sequence), gfx950's e4m3fn path its ``v_cvt_scalef32_pk_fp8_f32``, and unquantized caches
none. About 0.3 s of CPU per variant; the variants are spread over the machine's cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from atom_tier.kernels.aot import (
    AMD_ARCHS,
    MODEL_DTYPES,
    BuildResult,
    FusedVariant,
    build_all,
    build_int4_in_child,
    fused_variants,
)

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
HW_FP8 = {
    ("gfx942", torch.float8_e4m3fnuz): "v_cvt_pk_fp8_f32",
    ("gfx950", torch.float8_e4m3fn): "v_cvt_scalef32_pk_fp8_f32",
}
WORKERS = min(4, len(os.sched_getaffinity(0)))


@pytest.fixture(scope="module", autouse=True)
def _amd_backend() -> None:
    from triton.backends import backends

    if "amd" not in backends:
        pytest.skip("this Triton wheel has no AMD backend")


BuiltFor = Callable[[str], list[tuple[FusedVariant, BuildResult]]]


@pytest.fixture(scope="module")
def fused_builds() -> BuiltFor:
    """``fused_builds(arch)``: every fused variant built for ``arch``, both model dtypes in one
    ``build_all`` (one start of its spawned builders per arch, not per dtype: with Triton's
    cache warm, starting them costs more than the builds)."""
    built: dict[str, list[tuple[FusedVariant, BuildResult]]] = {}

    def build(arch: str) -> list[tuple[FusedVariant, BuildResult]]:
        if arch not in built:
            variants = list(fused_variants())
            results = build_all(variants, arch, WORKERS)
            built[arch] = list(zip(variants, results, strict=True))
        return built[arch]

    return build


@pytest.mark.parametrize("dtype", MODEL_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("arch", AMD_ARCHS)
def test_every_fused_variant_builds(arch: str, dtype: torch.dtype, fused_builds: BuiltFor) -> None:
    built = [(v, r) for v, r in fused_builds(arch) if v.dtype == dtype]
    assert len(built) == 120  # 2 styles x 5 head dims x 2 layouts x 2 tilings x 3 caches
    for v, r in built:
        assert r.name == v.name() and r.hsaco_bytes > 0, r
        want = HW_FP8.get((arch, v.cache_dtype))
        if want is not None:
            assert want in r.fp8_conversions, f"{r.name} on {arch}: {r.fp8_conversions}"
        if v.cache_dtype not in FP8:
            assert not r.fp8_conversions, f"{r.name}: unexpected {r.fp8_conversions}"


@pytest.mark.parametrize("arch", AMD_ARCHS)
def test_int4_codec_builds(arch: str) -> None:
    results = build_int4_in_child(arch)  # this process may have run interpreted kernels
    assert len(results) == 4
    assert all(r.hsaco_bytes > 0 for r in results)
