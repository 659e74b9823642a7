"""Requirement lists for docker/Dockerfile.rocm: the image's pins, and LMCache's ROCm runtime deps.

``constraints --out FILE``
    ``name==version`` for every distribution the (base) image has, the first one on
    ``sys.path`` per name (the one ``import`` uses). Given to every later ``pip install`` as
    ``-c``, it makes pip fail instead of up- or downgrading what vLLM was built with.

``requirements LMCACHE_REQUIREMENTS_DIR --out FILE --optional-out FILE``
    LMCache's install requirements as its ``setup.py`` composes them for a HIP build
    (``common.txt`` plus the ROCm profile's ``rocm_core.txt``), minus:

    * CUDA-only distributions (the patterns of :mod:`atom_tier.lmcache.native_ops`, which the
      ``lmcache-cuda-packages`` check also uses, plus ``nvtx``: NVIDIA profiling markers that
      LMCache 0.5.6 lists but never imports);
    * torch and its companions: the image's ROCm torch comes from a non-PyPI index;
    * what the image already has (its version is kept; a version outside LMCache's range is
      reported, not changed, because vLLM was built against it);
    * entries whose environment marker is false here.

    What remains is split in two. Optional: dependencies LMCache imports only inside the
    functions of features atom-tier does not use (remote S3/Redis/Bigtable backends, OpenTelemetry
    export, CUDA-IPC helpers via cupy, a build-time version tool); several pin versions that can
    conflict with the image's, so the Dockerfile installs each on its own and reports the ones
    it must skip. Everything else (anything unknown too) is required: its install must succeed.

``build-requirements LMCACHE_BUILD_TXT --out FILE``
    LMCache's build requirements (``requirements/build.txt``) without torch and its companions,
    installed into the builder stage so that ``pip wheel --no-build-isolation`` compiles against
    the image's ROCm torch. (``pip install --target`` would ignore the installed torch and fetch
    PyPI's CUDA build to satisfy LMCache's torch pin, shadowing the ROCm one during the build.)

``provided --out FILE`` / ``provided --verify FILE``
    The first writes ``name==version`` for torch, triton and their companions as the image has
    them (a constraints file: pip then fails rather than replace them with PyPI's); the second
    exits 1 when any of them now differs from that file, or one was added: run after every
    install so the image never carries a PyPI torch or triton.

Runs with the image's Python (no atom-tier needed for ``constraints``, which is built before
atom-tier is copied in, so that layer stays cached).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

# The files LMCache 0.5.6's setup.py reads for install_requires with BUILD_WITH_HIP=1.
HIP_REQUIREMENT_FILES = ("common.txt", "rocm_core.txt")
PROVIDED_BY_IMAGE = ("torch", "torchvision", "torchaudio", "triton", "pytorch-triton-rocm")
NVIDIA_ONLY_EXTRA = (re.compile(r"^nvtx$"),)
# Imported by LMCache 0.5.6 only inside functions of features atom-tier's lmcache engine does not
# use (checked with grep over its sources): see the module docstring.
OPTIONAL = (
    "awscrt",
    "redis",
    "google-api-core",
    "google-cloud-bigtable",
    "grpcio-observability",
    "opentelemetry-exporter-prometheus",
    "cupy-rocm-7-0",
    "setuptools-scm",
)


def normalize(name: str) -> str:
    """Distribution names compared as pip does (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions(paths: Sequence[str] | None = None) -> dict[str, str]:
    """Normalized name -> version of the first distribution of that name on the path."""
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=list(sys.path if paths is None else paths)):
        name = dist.metadata["Name"]
        if name and normalize(name) not in found:
            found[normalize(name)] = dist.version
    return found


def constraint_lines(versions: dict[str, str]) -> list[str]:
    """``name==version`` lines; versions pip could not parse are left out (pip would refuse
    the whole file otherwise) and named on stderr."""
    lines = []
    for name, version in sorted(versions.items()):
        try:
            Version(version)
        except InvalidVersion:
            message = f"constraints: {name} {version!r} is not a PEP 440 version, not pinned"
            print(message, file=sys.stderr)
            continue
        lines.append(f"{name}=={version}")
    return lines


def cuda_only_patterns() -> tuple[re.Pattern[str], ...]:
    # One source of truth with the preflight check that warns about these on ROCm.
    from atom_tier.lmcache.native_ops import CUDA_ONLY_DISTRIBUTIONS

    return (*CUDA_ONLY_DISTRIBUTIONS, *NVIDIA_ONLY_EXTRA)


@dataclass
class Selection:
    """The requirements to install, and what was left out with the reason."""

    keep: list[str] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def read_requirement_lines(path: Path) -> list[str]:
    """Requirement strings of one file: comments (also trailing ones) and blanks removed."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ValueError(f"{path}: option lines are not supported here: {line!r}")
        lines.append(line)
    return lines


def select(
    lines: Iterable[str],
    installed: dict[str, str],
    cuda_only: Sequence[re.Pattern[str]],
) -> Selection:
    """Apply the rules of the module docstring to LMCache's requirement strings."""
    result = Selection()
    seen: set[str] = set()
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ValueError(f"not a requirement: {line!r} ({exc})") from None
        name = normalize(req.name)
        if req.marker is not None and not req.marker.evaluate():
            result.dropped.append((line, "environment marker is false here"))
        elif any(pattern.match(name) for pattern in cuda_only):
            result.dropped.append((line, "CUDA-only"))
        elif name in PROVIDED_BY_IMAGE:
            result.dropped.append((line, "the image's ROCm build is kept"))
        elif name in installed:
            have = installed[name]
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                result.conflicts.append(
                    f"LMCache asks for {line}, the image has {req.name} {have}: the image's "
                    "version is kept (vLLM was built against it)"
                )
            result.dropped.append((line, f"already installed ({have})"))
        elif name not in seen:
            seen.add(name)
            req.marker = None  # already evaluated: true here
            (result.optional if name in OPTIONAL else result.keep).append(str(req))
    return result


def lmcache_hip_requirements(requirements_dir: Path) -> list[str]:
    lines: list[str] = []
    for name in HIP_REQUIREMENT_FILES:
        path = requirements_dir / name
        if not path.is_file():
            raise ValueError(f"{path} is missing: is {requirements_dir} LMCache's requirements/?")
        lines += read_requirement_lines(path)
    return lines


def build_requirements(build_txt: Path) -> list[str]:
    """LMCache's build requirements minus what the image provides (torch, triton, ...)."""
    kept = []
    for line in read_requirement_lines(build_txt):
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ValueError(f"not a requirement: {line!r} ({exc})") from None
        if normalize(req.name) not in PROVIDED_BY_IMAGE:
            kept.append(line)
    return kept


def provided_pins(installed: dict[str, str]) -> list[str]:
    return [f"{name}=={installed[name]}" for name in PROVIDED_BY_IMAGE if name in installed]


def provided_changes(pins: Sequence[str], installed: dict[str, str]) -> list[str]:
    """How torch/triton and companions differ now from the pins written before (empty: same)."""
    before = dict(line.split("==", 1) for line in pins if line)
    now = {name: installed[name] for name in PROVIDED_BY_IMAGE if name in installed}
    changes = []
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            was, became = before.get(name, "absent"), now.get(name, "absent")
            changes.append(f"{name}: the image had {was}, now {became}")
    return changes


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pins = sub.add_parser("constraints", help="pin every installed distribution")
    pins.add_argument("--out", type=Path, required=True)
    reqs = sub.add_parser("requirements", help="LMCache's HIP runtime requirements, filtered")
    reqs.add_argument("requirements_dir", type=Path, help="LMCache's requirements/ folder")
    reqs.add_argument("--out", type=Path, required=True, help="required ones")
    reqs.add_argument("--optional-out", type=Path, required=True, help="optional ones")
    build = sub.add_parser("build-requirements", help="LMCache's build tools, without torch")
    build.add_argument("build_txt", type=Path, help="LMCache's requirements/build.txt")
    build.add_argument("--out", type=Path, required=True)
    provided = sub.add_parser("provided", help="pin, or verify, the image's torch and triton")
    mode = provided.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path)
    mode.add_argument("--verify", type=Path)
    args = parser.parse_args(argv)

    if args.command == "build-requirements":
        try:
            lines = build_requirements(args.build_txt)
        except (OSError, ValueError) as exc:
            print(f"lmcache build requirements: {exc}", file=sys.stderr)
            return 2
        _write(args.out, lines)
        print(f"lmcache build requirements: {len(lines)} -> {args.out} (torch family left out)")
        return 0
    if args.command == "provided":
        if args.out is not None:
            _write(args.out, provided_pins(installed_versions()))
            return 0
        changes = provided_changes(args.verify.read_text().splitlines(), installed_versions())
        for change in changes:
            print(f"provided packages changed: {change}", file=sys.stderr)
        return 1 if changes else 0
    if args.command == "constraints":
        lines = constraint_lines(installed_versions())
        _write(args.out, lines)
        print(f"constraints: {len(lines)} distributions pinned in {args.out}")
        return 0
    try:
        selection = select(
            lmcache_hip_requirements(args.requirements_dir),
            installed_versions(),
            cuda_only_patterns(),
        )
    except ValueError as exc:
        print(f"lmcache requirements: {exc}", file=sys.stderr)
        return 2
    _write(args.out, selection.keep)
    _write(args.optional_out, selection.optional)
    for line, reason in selection.dropped:
        print(f"lmcache requirements: left out {line!r}: {reason}")
    for conflict in selection.conflicts:
        print(f"lmcache requirements: WARNING {conflict}", file=sys.stderr)
    print(
        f"lmcache requirements: {len(selection.keep)} required -> {args.out}, "
        f"{len(selection.optional)} optional -> {args.optional_out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
