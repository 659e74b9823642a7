"""The KV-scale probe on real safetensors files and real quantization configs (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from atom_tier.platform.kv_scales import checkpoint_kv_scales

FP8 = {"quant_method": "fp8", "activation_scheme": "static"}


def _checkpoint(folder: Path, *names: str) -> str:
    folder.mkdir()
    save_file({name: torch.ones(1) for name in names}, str(folder / "model.safetensors"))
    return str(folder)


def test_unquantized_model_never_has_kv_scales(tmp_path: Path) -> None:
    # vLLM creates no k/v scale parameters without a quantization method.
    model = _checkpoint(tmp_path / "m", "model.layers.0.self_attn.k_scale")
    assert checkpoint_kv_scales(None, model) is False


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (("model.layers.0.self_attn.k_scale", "model.layers.0.self_attn.v_scale"), True),
        (("model.layers.0.self_attn.kv_scale",), True),
        (("model.layers.0.self_attn.q_proj.weight_scale",), False),
    ],
)
def test_quantized_local_checkpoint_is_read(
    tmp_path: Path, names: tuple[str, ...], expected: bool
) -> None:
    assert checkpoint_kv_scales(FP8, _checkpoint(tmp_path / "m", *names)) is expected


def test_declared_kv_scheme_counts_and_remote_models_are_unknown() -> None:
    declared = {"quant_method": "compressed-tensors", "kv_cache_scheme": {"num_bits": 8}}
    assert checkpoint_kv_scales(declared, "org/not-local") is True
    assert checkpoint_kv_scales(FP8, "org/not-local") is None
