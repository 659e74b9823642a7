"""register_platform's decision: which class (if any), the import-time environment, ATOM."""

from __future__ import annotations

import os

import pytest

from atom_tier.platform.selection import (
    CPU_PLATFORM,
    ROCM_PLATFORM,
    conflicting_platform_plugin,
    select_platform,
    set_if_absent,
)
from atom_tier.preflight.context import EntryPoint
from atom_tier.settings import load_foreign_env, load_settings
from tests.platform.conftest import FakeAmdsmiFactory

OWN = EntryPoint("atom_tier", "atom_tier.plugin:register_platform", "atom-tier")
ATOM = EntryPoint("atom", "atom.plugin.vllm.register:register_platform", "atom")


def select(env: dict[str, str], torch_kind: str, plugins=(OWN,), rocm_gpu=True):  # type: ignore[no-untyped-def]
    return select_platform(
        load_settings(env), load_foreign_env(env), torch_kind, list(plugins), rocm_gpu=rocm_gpu
    )


def test_rocm_torch_selects_the_rocm_platform_with_its_environment() -> None:
    selection = select({}, "rocm")
    assert selection.platform == ROCM_PLATFORM
    assert selection.env["VLLM_ROCM_USE_AITER"] == "1"
    assert selection.env["VLLM_ROCM_QUICK_REDUCE_QUANTIZATION"] == "INT4"
    assert selection.env["AITER_QUICK_REDUCE_QUANTIZATION"] == "INT4"
    assert selection.env["PYTHONHASHSEED"] == "0"


@pytest.mark.parametrize("torch_kind", ["rocm", "cpu", "cuda"])
def test_disabled_selects_nothing(torch_kind: str) -> None:
    env = {"ATOM_TIER_DISABLE": "1", "ATOM_TIER_CPU_PLATFORM": "1"}
    selection = select(env, torch_kind)
    assert selection.platform is None and selection.env == {}


def test_cpu_platform_only_when_asked_and_only_on_cpu_torch() -> None:
    assert select({}, "cpu").platform is None
    opted = select({"ATOM_TIER_CPU_PLATFORM": "1"}, "cpu")
    assert opted.platform == CPU_PLATFORM and opted.env == {"PYTHONHASHSEED": "0"}
    cuda = select({"ATOM_TIER_CPU_PLATFORM": "1"}, "cuda")
    assert cuda.platform is None and "ignored" in cuda.reason
    assert select({"ATOM_TIER_CPU_PLATFORM": "1"}, "rocm").platform == ROCM_PLATFORM
    assert select({}, "cuda").platform is None


def test_steps_aside_for_atom_and_says_how_to_choose() -> None:
    selection = select({}, "rocm", plugins=(OWN, ATOM))
    assert selection.platform is None and selection.warning
    assert "ATOM_DISABLE_VLLM_PLUGIN=1" in selection.reason
    assert "connector and checks still run" in selection.reason


@pytest.mark.parametrize(
    ("env", "conflict"),
    [
        ({}, True),
        ({"ATOM_DISABLE_VLLM_PLUGIN": "1"}, False),
        ({"ATOM_DISABLE_VLLM_PLUGIN": "0"}, True),
        # ATOM compares the lower-cased value with "1" only: "true" does not disable it.
        ({"ATOM_DISABLE_VLLM_PLUGIN": "true"}, True),
        ({"VLLM_PLUGINS": "atom_tier"}, False),  # vLLM will not load ATOM's plugin at all
        ({"VLLM_PLUGINS": "atom_tier,atom"}, True),
    ],
)
def test_atom_conflict_follows_atom_and_vllm_rules(env: dict[str, str], conflict: bool) -> None:
    found = conflicting_platform_plugin([OWN, ATOM], load_foreign_env(env))
    assert (found == ATOM) is conflict
    assert (select(env, "rocm", plugins=(OWN, ATOM)).platform is None) is conflict


def test_own_and_unrelated_plugins_are_not_conflicts() -> None:
    unrelated = EntryPoint("atomic", "atomic_hw.vllm:register", "atomic-hw")
    assert conflicting_platform_plugin([OWN, unrelated], load_foreign_env({})) is None


def test_set_if_absent_keeps_explicit_values() -> None:
    environ = {"VLLM_ROCM_QUICK_REDUCE_QUANTIZATION": "NONE", "PYTHONHASHSEED": "7"}
    wanted = select({}, "rocm").env
    applied = set_if_absent(environ, wanted)
    assert environ["VLLM_ROCM_QUICK_REDUCE_QUANTIZATION"] == "NONE"
    assert environ["PYTHONHASHSEED"] == "7"
    assert environ["AITER_QUICK_REDUCE_QUANTIZATION"] == "INT4"
    assert set(applied) == set(wanted) - {"VLLM_ROCM_QUICK_REDUCE_QUANTIZATION", "PYTHONHASHSEED"}


def test_entry_point_sets_the_environment_on_rocm(
    fake_rocm_device: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atom_tier.plugin import register_platform

    monkeypatch.setenv("AITER_QUICK_REDUCE_QUANTIZATION", "INT6")  # the operator's choice
    monkeypatch.delenv("VLLM_ROCM_USE_AITER", raising=False)
    assert register_platform() == ROCM_PLATFORM
    assert os.environ["VLLM_ROCM_USE_AITER"] == "1"
    # The fallback alias makes INT6 atom-tier's setting too, so vLLM gets INT6 as well.
    assert os.environ["VLLM_ROCM_QUICK_REDUCE_QUANTIZATION"] == "INT6"
    assert os.environ["AITER_QUICK_REDUCE_QUANTIZATION"] == "INT6"
    monkeypatch.setenv("ATOM_TIER_DISABLE", "1")
    assert register_platform() is None


def test_rocm_torch_without_a_gpu_stands_aside_with_an_info_line() -> None:
    selection = select({}, "rocm", rocm_gpu=False)
    assert selection.platform is None and not selection.warning and selection.env == {}
    assert "no AMD GPU is visible" in selection.reason


def test_gpu_less_rocm_host_resolves_vllms_platform_without_crashing(
    fake_amdsmi: FakeAmdsmiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ROCm torch (faked: torch.version.hip) with amdsmi (FakeAmdsmi) listing no device, as on
    a CI runner or in `docker build`: vLLM's real plugin resolution must not get atom-tier's
    ROCm class (importing vllm.platforms.rocm there fails in _get_gcn_arch)."""
    import torch
    import vllm.platforms

    from atom_tier.plugin import register_platform

    for name in ("ATOM_TIER_DISABLE", "VLLM_TARGET_DEVICE", "VLLM_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.version, "hip", "6.4.43482-faked", raising=False)
    amdsmi = fake_amdsmi(0)
    assert register_platform() is None
    assert amdsmi.calls == ["init", "handles", "shut_down"]  # vLLM's own probe asked it
    assert vllm.platforms.resolve_current_platform_cls_qualname() == (
        "vllm.platforms.cpu.CpuPlatform"
    )
    fake_amdsmi(1)  # the same host with a GPU
    assert register_platform() == ROCM_PLATFORM
