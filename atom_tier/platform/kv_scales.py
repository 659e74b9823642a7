"""Whether a checkpoint gives vLLM KV-cache scales for an FP8 KV cache (a file probe).

vLLM loads ``k_scale``/``v_scale`` only through a quantization method that creates them
(``_init_kv_cache_quant`` in vllm/model_executor/layers/attention/attention.py); when none is
loaded it uses 1.0 (``BaseKVCacheMethod.process_weights_after_loading`` in
vllm/model_executor/layers/quantization/kv_cache.py, which logs "Using KV cache scaling factor
1.0"). A model without a quantization config therefore never has KV scales, whatever its files
hold; a quantized one has them when its config declares a KV scheme or its tensors include them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

KV_SCALE_SUFFIXES = (".k_scale", ".v_scale", ".kv_scale")
# Quantization-config keys that declare calibrated KV scales (compressed-tensors, ModelOpt).
KV_SCHEME_KEYS = ("kv_cache_scheme", "kv_cache_quant_algo")
HEADER_LIMIT = 100 * 2**20  # a safetensors header is JSON; refuse absurd lengths


def _safetensors_names(path: Path) -> list[str]:
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > HEADER_LIMIT:
            return []
        header = json.loads(file.read(length))
    return [name for name in header if name != "__metadata__"]


def tensor_names(model_dir: Path) -> Iterable[str]:
    """Tensor names of a local safetensors checkpoint (the index, else each file's header)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text()).get("weight_map", {}))
    names: list[str] = []
    for path in sorted(model_dir.glob("*.safetensors")):
        names += _safetensors_names(path)
    return names


def checkpoint_kv_scales(quantization: Mapping[str, Any] | None, model: str) -> bool | None:
    """True/False when known; None for a quantized model whose files are not local."""
    if not quantization:
        return False
    if any(quantization.get(key) for key in KV_SCHEME_KEYS):
        return True
    model_dir = Path(model)
    if not model_dir.is_dir():
        return None
    try:
        return any(name.endswith(KV_SCALE_SUFFIXES) for name in tensor_names(model_dir))
    except (OSError, ValueError, struct.error):
        return None


def model_kv_scales(vllm_config: Any) -> bool | None:
    """:func:`checkpoint_kv_scales` for the model of a VllmConfig (None without a model)."""
    model = getattr(vllm_config, "model_config", None)
    if model is None:
        return None
    quantization = getattr(model.hf_config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, Mapping):
        quantization = getattr(quantization, "to_dict", lambda: {"quant_method": "?"})()
    return checkpoint_kv_scales(quantization, str(model.model))
