"""The deployment a plan is for: KV bytes per token from a model's ``config.json``, the device
KV cache it leaves, and sizes in chunks.

The arithmetic (GiB, KV bytes per token, the size formatters) is :mod:`atom_tier.sizing`'s;
this module reads its inputs from a checkpoint's files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atom_tier.sizing import GIB, gb_value, human_size, kv_token_bytes

__all__ = ["GIB", "Deployment", "PlanInputError", "gb_value", "human_size", "model_kv"]

KV_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "bf16": 2, "fp16": 2, "auto": 2}


class PlanInputError(ValueError):
    """Bad input to ``atom-tier plan``; the message names the flag or file."""


@dataclass(frozen=True)
class ModelKv:
    """KV bytes per token of a model and where each factor came from."""

    bytes_per_token: int
    explanation: str
    weights_bytes: int | None


def _config_path(model: Path) -> Path:
    path = model / "config.json" if model.is_dir() else model
    if not path.is_file():
        raise PlanInputError(f"--model {model}: no config.json there")
    return path


def _int_field(config: dict[str, Any], path: Path, *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PlanInputError(f"{path}: '{name}' must be a positive integer, got {value!r}")
            return value
    return None


def model_kv(model: Path, kv_dtype: str) -> ModelKv:
    """KV bytes per token for the whole server (all ranks) from ``config.json``.

    Full attention: 2 (K and V) x layers x KV heads x head dim x bytes per value. MLA
    (``kv_lora_rank``): one latent of ``kv_lora_rank + qk_rope_head_dim`` values per layer.
    Layers listed as ``sliding_attention`` in ``layer_types`` keep only their window, so they
    are left out of the per-token figure (a long context's KV is the full layers').
    """
    if kv_dtype not in KV_DTYPE_BYTES:
        raise PlanInputError(
            f"--kv-dtype {kv_dtype!r} is not known: use one of {', '.join(KV_DTYPE_BYTES)}"
        )
    path = _config_path(model)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanInputError(f"{path} cannot be read: {error}") from None
    if not isinstance(raw, dict):
        raise PlanInputError(f"{path}: top level is not a JSON object")
    config: dict[str, Any] = (
        raw.get("text_config", raw) if isinstance(raw.get("text_config"), dict) else raw
    )
    value_bytes = KV_DTYPE_BYTES[kv_dtype]
    layers = _int_field(config, path, "num_hidden_layers", "num_layers", "n_layer")
    if layers is None:
        raise PlanInputError(f"{path}: no 'num_hidden_layers' (the number of layers)")
    layer_types = config.get("layer_types")
    full_layers = layers
    if isinstance(layer_types, list) and layer_types:
        full_layers = sum(1 for kind in layer_types if "sliding" not in str(kind))
    latent = _int_field(config, path, "kv_lora_rank")
    if latent is not None:
        rope = _int_field(config, path, "qk_rope_head_dim") or 0
        per_token = kv_token_bytes(full_layers, 1, latent + rope, value_bytes, mla=True)
        explanation = (
            f"{full_layers} layers x ({latent} latent + {rope} rope) x {value_bytes} B (MLA)"
        )
    else:
        heads = _int_field(config, path, "num_attention_heads", "n_head")
        kv_heads = _int_field(config, path, "num_key_value_heads", "multi_query_group_num")
        kv_heads = kv_heads or heads
        head_dim = _int_field(config, path, "head_dim")
        hidden = _int_field(config, path, "hidden_size", "n_embd")
        if head_dim is None and hidden is not None and heads:
            head_dim = hidden // heads
        if kv_heads is None or head_dim is None:
            raise PlanInputError(
                f"{path}: cannot tell the KV heads and head dim (need 'num_key_value_heads' or "
                "'num_attention_heads', and 'head_dim' or 'hidden_size')"
            )
        per_token = kv_token_bytes(full_layers, kv_heads, head_dim, value_bytes)
        explanation = (
            f"2 x {full_layers} layers x {kv_heads} KV heads x {head_dim} head dim x "
            f"{value_bytes} B ({kv_dtype})"
        )
        if full_layers != layers:
            explanation += f"; {layers - full_layers} sliding-window layers left out"
    return ModelKv(per_token, explanation, _weights_bytes(path.parent))


def _weights_bytes(folder: Path) -> int | None:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


@dataclass(frozen=True)
class Deployment:
    """GPUs, KV bytes per token and the device KV cache they leave, in tokens."""

    kv_bytes_per_token: int
    device_kv_tokens: int
    explanation: str

    @classmethod
    def from_inputs(
        cls,
        *,
        kv_bytes_per_token: int,
        kv_explanation: str,
        device_kv_tokens: int | None,
        gpu_gb: float | None,
        gpu_memory_utilization: float,
        tensor_parallel: int,
        weights_bytes: int | None,
    ) -> Deployment:
        if kv_bytes_per_token <= 0:
            raise PlanInputError("KV bytes per token must be positive")
        if device_kv_tokens is not None:
            return cls(
                kv_bytes_per_token,
                device_kv_tokens,
                f"KV {kv_bytes_per_token:,} B/token ({kv_explanation}); device KV cache "
                f"{device_kv_tokens:,} tokens (--device-kv-tokens)",
            )
        if gpu_gb is None or weights_bytes is None:
            raise PlanInputError(
                "the device KV cache size needs --device-kv-tokens (the 'GPU KV cache size' vLLM "
                "prints), or --gpu-gb with the weights (a checkpoint with "
                "model.safetensors.index.json, or --weights-gb)"
            )
        if not 0 < gpu_memory_utilization <= 1:
            raise PlanInputError(
                f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        budget = gpu_gb * GIB * gpu_memory_utilization * tensor_parallel - weights_bytes
        tokens = max(0, int(budget // kv_bytes_per_token))
        return cls(
            kv_bytes_per_token,
            tokens,
            f"KV {kv_bytes_per_token:,} B/token ({kv_explanation}); device KV cache "
            f"{tokens:,} tokens = ({gpu_gb:g} GiB x {gpu_memory_utilization:g} x TP "
            f"{tensor_parallel} - {human_size(weights_bytes)} weights) / KV per token "
            "(activations and graphs not subtracted: vLLM's printed 'GPU KV cache size' is "
            "the real figure, give it with --device-kv-tokens)",
        )

    def chunks(self, size_bytes: float, chunk_tokens: int) -> int:
        """Whole chunks a tier of ``size_bytes`` holds (as vLLM sizes the DRAM tier)."""
        return int(size_bytes // (chunk_tokens * self.kv_bytes_per_token))
