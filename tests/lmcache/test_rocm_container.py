"""Inside the ROCm image (docker/): LMCache must be the HIP source build, without CUDA leftovers.

The published recipe went wrong here: ``pip install lmcache`` gives the CUDA wheel, whose ops
cannot load on ROCm (silent torch fallback), and pulls CUDA-only packages. Runs only where
torch is a ROCm build; skipped elsewhere.
"""

from __future__ import annotations

import pytest

from atom_tier.lmcache.native_ops import OpsBuild, cuda_only_distributions, probe_native_ops


def _rocm_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(getattr(torch.version, "hip", None))


pytestmark = [
    pytest.mark.rocm,
    pytest.mark.skipif(not _rocm_torch(), reason="needs a ROCm build of torch (the ROCm image)"),
]


def test_installed_lmcache_is_hip_built() -> None:
    ops = probe_native_ops()
    assert ops.build is OpsBuild.HIP, ops.describe()


def test_lmcache_hip_ops_import_and_bind() -> None:
    """The probe's verdict, confirmed by the import LMCache itself performs."""
    ops = probe_native_ops()
    assert ops.library is not None
    import importlib

    module = importlib.import_module(f"lmcache.{ops.library.name.split('.')[0]}")
    assert module.__file__ == str(ops.library)


def test_no_cuda_only_packages_in_the_image() -> None:
    assert cuda_only_distributions() == ()
