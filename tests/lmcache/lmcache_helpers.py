"""Helpers for the lmcache engine tests: stand-in LMCache installs built with gcc, settings.

Stand-ins for what the real wheel cannot show: a HIP build (an extension linked against a
``libamdhip64.so`` compiled here; there is no ROCm on this machine), an install whose extension
is missing, one built for another Python, and an extension linked to neither GPU runtime.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atom_tier.settings import AtomTierSettings, load_settings

LMCACHE_VERSION = "0.5.6"
EXT_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
# run_in_lmcache(script, *args, env=...) -> the JSON the script printed last (conftest fixture)
RunInLMCache = Callable[..., Any]


def settings_of(**env: object) -> AtomTierSettings:
    """Settings from exactly these variables (the process environment is ignored)."""
    return load_settings({k: str(v) for k, v in env.items()})


def lmcache_env(site: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child environment that sees ``site`` first and no stray LMCache/atom-tier variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LMCACHE_", "ATOM_TIER_", "DO_NOT_TRACK"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def _gcc(*args: str | Path) -> None:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the stand-in libraries"
    subprocess.run([gcc, *map(str, args)], check=True, capture_output=True)


def write_dist_info(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def make_lmcache_package(site: Path, version: str = LMCACHE_VERSION) -> Path:
    package = site / "lmcache"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('stand-in: must not be imported')\n")
    write_dist_info(site, "lmcache", version)
    return package


def build_extension(
    path: Path, libraries: Sequence[str] = (), library_dir: Path | None = None
) -> Path:
    """A Python-extension-named shared object whose DT_NEEDED lists ``libraries``."""
    source = path.with_suffix(".c")
    calls = "".join(f"extern int stub_{i}(void);\n" for i in range(len(libraries)))
    body = " + ".join(f"stub_{i}()" for i in range(len(libraries))) or "0"
    source.write_text(f"{calls}int lmcache_stand_in(void) {{ return {body}; }}\n")
    link = [f"-l{lib}" for lib in libraries]
    search: list[str | Path] = ["-L", library_dir] if library_dir else []
    _gcc("-shared", "-fPIC", "-o", path, source, *search, "-Wl,--no-as-needed", *link)
    source.unlink()
    return path


def build_library(directory: Path, name: str, index: int) -> None:
    """lib<name>.so exporting stub_<index> (stands in for a GPU runtime that is not here)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / f"{name}.c"
    source.write_text(f"int stub_{index}(void) {{ return {index}; }}\n")
    soname = f"lib{name}.so"
    _gcc("-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", directory / soname, source)


def make_fake_build(site: Path, runtimes: Sequence[str], module: str = "cuda_ops") -> Path:
    """An LMCache install whose native ops link the given runtime libraries (by short name)."""
    package = make_lmcache_package(site)
    libs = site.parent / f"{site.name}-libs"
    for index, name in enumerate(runtimes):
        build_library(libs, name, index)
    return build_extension(package / f"{module}{EXT_SUFFIX}", runtimes, libs)
