"""In the ROCm image: the LMCache engine's guards pass, because the image built LMCache right.

docker/Dockerfile.rocm builds LMCache from source with BUILD_WITH_HIP=1 and keeps the wheel's
CUDA-only packages out. Here atom-tier's own checks judge the result, the way an operator's
`atom-tier doctor` would with ``ATOM_TIER_CONNECTOR=lmcache``. (tests/lmcache/
test_rocm_container.py also imports the ops through LMCache itself.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from atom_tier.lmcache.native_ops import OpsBuild, probe_native_ops
from atom_tier.preflight import Level, build_context, run_preflight
from atom_tier.settings import load_settings

pytestmark = pytest.mark.rocm

LMCACHE_ENV = {"ATOM_TIER_CONNECTOR": "lmcache"}


def test_native_ops_are_hip_built() -> None:
    ops = probe_native_ops()
    assert ops.build is OpsBuild.HIP, ops.describe()
    assert any(lib.startswith("libamdhip64") for lib in ops.needed), ops.needed


def test_lmcache_guards_find_no_error() -> None:
    ctx = build_context(load_settings(LMCACHE_ENV))
    findings = run_preflight(ctx, areas={"lmcache"})
    by_code = {f.code: f for f in findings}
    assert by_code["lmcache-native-ops"].level is Level.OK, by_code["lmcache-native-ops"]
    assert by_code["lmcache-cuda-packages"].level is Level.OK, by_code["lmcache-cuda-packages"]
    errors = [f for f in findings if f.level is Level.ERROR]
    assert not errors, errors


def test_doctor_passes_in_the_image_with_the_lmcache_engine() -> None:
    env = {**os.environ, **LMCACHE_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "atom_tier.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    report = json.loads(result.stdout)
    levels = {f["code"]: f["level"] for f in report["findings"]}
    assert result.returncode == 0, [f for f in report["findings"] if f["level"] == "error"]
    assert report["environment"]["torch_build"] == "rocm"
    for code in ("torch-build", "vllm-version", "aiter", "lmcache-native-ops"):
        assert levels.get(code) == "ok", (code, levels.get(code))
