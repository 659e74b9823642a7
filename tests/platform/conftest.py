"""Fixtures for the platform tests: a faked ROCm device, and os.environ restored after each test.

`fake_rocm_device` stands in for what cannot exist on this machine: a ROCm build of torch, AMD's
`amdsmi` listing one processor (`FakeAmdsmi`; vLLM's `rocm_platform_plugin` asks it whether a
GPU is there) and an MI300X (gfx942). `import vllm.platforms.rocm` queries the GPU at module import
(`torch.cuda.get_device_properties(...).gcnArchName`) and vLLM's ROCm platform asks torch for
the device capability; both are answered by the fake, and `torch.version.hip` says "ROCm". The
fake is installed before the first import of `vllm.platforms.rocm` in the session, which then
stays imported (it caches the arch at import): every test that imports it uses this fixture.
"""

from __future__ import annotations

import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

MI300X = types.SimpleNamespace(
    gcnArchName="gfx942:sramecc+:xnack-",
    name="AMD Instinct MI300X (faked)",
    total_memory=192 * 1024**3,
    multi_processor_count=304,
    major=9,
    minor=4,
)


class FakeAmdsmi(types.ModuleType):
    """A fake of AMD's `amdsmi` module (it needs a ROCm driver): the three calls vLLM's
    `rocm_platform_plugin` makes, listing `processors` devices."""

    def __init__(self, processors: int) -> None:
        super().__init__("amdsmi")
        self.processors = processors
        self.calls: list[str] = []

    def amdsmi_init(self) -> None:
        self.calls.append("init")

    def amdsmi_get_processor_handles(self) -> list[object]:
        self.calls.append("handles")
        return [object() for _ in range(self.processors)]

    def amdsmi_shut_down(self) -> None:
        self.calls.append("shut_down")


FakeAmdsmiFactory = Callable[[int], FakeAmdsmi]


@pytest.fixture
def fake_amdsmi(monkeypatch: pytest.MonkeyPatch) -> FakeAmdsmiFactory:
    """`fake_amdsmi(n)`: put a FakeAmdsmi listing n processors where `import amdsmi` finds it."""

    def install(processors: int) -> FakeAmdsmi:
        module = FakeAmdsmi(processors)
        monkeypatch.setitem(sys.modules, "amdsmi", module)
        return module

    return install


@pytest.fixture
def fake_rocm_device(
    monkeypatch: pytest.MonkeyPatch, fake_amdsmi: FakeAmdsmiFactory
) -> Iterator[types.SimpleNamespace]:
    """A faked ROCm torch + MI300X for importing and using vLLM's ROCm platform on CPU."""
    import vllm.platforms

    # Resolve vLLM's platform for real first: imports below would otherwise resolve it under
    # the fake, and the process would keep a ROCm platform after this test.
    monkeypatch.setattr(vllm.platforms, "_current_platform", vllm.platforms.current_platform)
    monkeypatch.setattr(torch.version, "hip", "6.4.43482-faked", raising=False)
    fake_amdsmi(1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_a, **_k: MI300X)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_a, **_k: (9, 4))
    for name in ("ATOM_TIER_DISABLE", "VLLM_TARGET_DEVICE", "VLLM_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    # The first import in the session reads the faked arch.
    import vllm.platforms.rocm
    from vllm._aiter_ops import rocm_aiter_ops

    # refresh_env_variables() (called by the platform hook) rewrites these class attributes
    # from os.environ; put them back after the test.
    for name, value in list(vars(rocm_aiter_ops).items()):
        if name.startswith("_") and not name.startswith("__") and not callable(value):
            monkeypatch.setattr(rocm_aiter_ops, name, value)
    yield MI300X


@pytest.fixture(scope="session")
def tiny_whisper_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Whisper config (an encoder-decoder architecture vLLM 0.32 serves) with the tiny
    model's tokenizer: enough for vLLM to build a VllmConfig; no weights are read."""
    from transformers import WhisperConfig

    out = tmp_path_factory.mktemp("tiny-whisper")
    WhisperConfig(
        vocab_size=600,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        torch_dtype="bfloat16",
    ).save_pretrained(str(out))
    for path in tiny_model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(path, out / path.name)
    return out


@pytest.fixture
def rocm_platform(monkeypatch: pytest.MonkeyPatch, fake_rocm_device: object) -> Any:
    """AtomTierRocmPlatform as vLLM's current platform for this test, also in the vLLM modules
    that bound ``current_platform`` at import (vllm/config/model.py does), as in a ROCm process."""
    import vllm.platforms

    from atom_tier.platform.rocm import AtomTierRocmPlatform

    platform = AtomTierRocmPlatform()
    previous = vllm.platforms.current_platform
    monkeypatch.setattr(vllm.platforms, "_current_platform", platform)
    for name, module in list(sys.modules.items()):
        if name.startswith("vllm.") and getattr(module, "current_platform", None) is previous:
            monkeypatch.setattr(module, "current_platform", platform)
    return platform


@pytest.fixture
def fake_aiter(monkeypatch: pytest.MonkeyPatch, rocm_platform: Any) -> Iterator[None]:
    """AMD AITER "installed" (a double: only vLLM's availability flag is set) and enabled."""
    import vllm._aiter_ops as aiter_ops

    monkeypatch.setattr(aiter_ops, "IS_AITER_FOUND", True)
    # vllm._aiter_ops bound vLLM's platform when first imported; it must see the ROCm one.
    monkeypatch.setattr(aiter_ops, "current_platform", rocm_platform)
    monkeypatch.setenv("VLLM_ROCM_USE_AITER", "1")
    aiter_ops.rocm_aiter_ops.refresh_env_variables()
    yield
