"""Fixtures for the lmcache engine: the real LMCache 0.5.6 wheel, and a HIP stand-in.

The real wheel goes into a separate directory with ``pip install --no-deps --target`` (not into
the venv: its dependencies would downgrade numpy/prometheus_client under vLLM), together with
``sortedcontainers``, the one dependency LMCache's vLLM adapter needs to import on CPU. Code that
imports LMCache runs in a subprocess with that directory on ``PYTHONPATH``, so LMCache's
process-wide singletons (its config) never leak between tests or into the test process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lmcache_helpers import LMCACHE_VERSION, RunInLMCache, lmcache_env, make_fake_build

from tests.conftest import made_once

ADAPTER_DEPENDENCIES = ("sortedcontainers==2.4.0",)


def install_lmcache(target: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--target",
        str(target),
        f"lmcache=={LMCACHE_VERSION}",
        *ADAPTER_DEPENDENCIES,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"pip could not fetch LMCache {LMCACHE_VERSION}:\n" + (result.stderr[-3000:])
    )


@pytest.fixture(scope="session")
def lmcache_wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real LMCache 0.5.6 PyPI wheel (the CUDA build), unpacked by pip (once per run)."""
    return made_once(tmp_path_factory, "lmcache-wheel", install_lmcache)


@pytest.fixture(scope="session")
def run_in_lmcache(lmcache_wheel_dir: Path) -> RunInLMCache:
    """``run_in_lmcache(script, *args, env={...})``: run a Python script with the real LMCache
    importable; the script prints one JSON document as its last stdout line, returned parsed."""

    def run(script: str, *args: str, env: dict[str, str] | None = None) -> Any:
        result = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=600,
            env=lmcache_env(lmcache_wheel_dir, env),
        )
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture
def hip_build(tmp_path: Path) -> Path:
    """Stand-in for a BUILD_WITH_HIP=1 LMCache (no ROCm here): ops linking libamdhip64 and
    libc10_hip, as a hipified torch extension does. Returns the site directory."""
    site = tmp_path / "hip-site"
    make_fake_build(site, ["amdhip64", "c10_hip"])
    return site
