"""What `pip install .` gives: packages, console script, entry points; doctor without vLLM."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def source_packages() -> set[str]:
    """Every package the repository holds, by its installed import name."""
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "atom_tier").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    found |= {
        "atom_tier.kernels." + ".".join(p.parent.relative_to(ROOT / "kernels").parts)
        for p in (ROOT / "kernels").rglob("__init__.py")
        if p.parent != ROOT / "kernels"
    }
    return found | {"atom_tier.kernels"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"pip wheel {ROOT} failed:\n{result.stderr[-3000:]}"
    [built] = out.glob("atom_tier-*.whl")
    return built


def test_wheel_holds_every_package_and_the_kernels_folder(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert source_packages() <= packaged, "add missing packages to pyproject's `packages` list"
    kernels = {
        Path(n).name for n in names if n.startswith("atom_tier/kernels/") and n.endswith(".py")
    }
    assert kernels == {p.name for p in (ROOT / "kernels").glob("*.py")}


def test_wheel_entry_points_and_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        [entry_file] = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(entry_file).decode()
        [meta_file] = [n for n in archive.namelist() if n.endswith("METADATA")]
        meta = archive.read(meta_file).decode()
    assert "[vllm.platform_plugins]\natom_tier = atom_tier.plugin:register_platform" in text
    assert "[vllm.general_plugins]\natom_tier = atom_tier.plugin:register" in text
    assert "atom-tier = atom_tier.cli:main" in text
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not any(r.split()[1].lower().startswith("aiter") for r in requires), (
        "PyPI aiter is unrelated"
    )
    assert not any("vllm" in r for r in core), "vLLM is a peer dependency"


def test_entry_points_discoverable_in_this_environment() -> None:
    platform = {ep.name: ep for ep in metadata.entry_points(group="vllm.platform_plugins")}
    general = {ep.name: ep for ep in metadata.entry_points(group="vllm.general_plugins")}
    from atom_tier import plugin

    assert platform["atom_tier"].load() is plugin.register_platform
    assert general["atom_tier"].load() is plugin.register


def test_doctor_runs_where_vllm_is_not_installed(wheel: Path, tmp_path: Path) -> None:
    """A clean venv with only the wheel and its dependencies (from PyPI): no vLLM, no torch.

    This interpreter's pip installs into it (``--python``): the venv needs no pip of its own,
    and skipping ensurepip saves seconds. No PYTHONPATH reaches the venv's processes: a
    checkout on it (with the egg-info that ``pip wheel`` leaves there) would make pip skip the
    install as already satisfied, and would hand the entry points below to the venv."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)],
        check=True,
        timeout=600,
        env=clean,
    )
    result = subprocess.run(
        [str(venv / "bin" / "atom-tier"), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["environment"]["vllm"] is None and data["environment"]["torch"] is None
    by_code = {f["code"]: f for f in data["findings"]}
    assert by_code["vllm-version"]["level"] == "warning"
    assert "not installed" in by_code["vllm-version"]["message"]
    entry = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; "
            "print([e.value for e in m.entry_points(group='vllm.general_plugins')])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean,
    )
    assert "atom_tier.plugin:register" in entry.stdout
