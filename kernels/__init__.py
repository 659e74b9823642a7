"""Portable Triton kernels for AMD Instinct (installed as ``atom_tier.kernels``).

* ``qk_norm_rope_cache``: per-head RMSNorm of q and k, rotary embedding (NeoX/GPT-J, partial
  rotary), q out, k and v into a paged FP8 (e4m3fn / e4m3fnuz) or bf16/fp16 KV cache in the
  layouts of vLLM 0.32's ROCm backends. Dispatches to AITER, Triton or torch; also registered
  as ``torch.ops.atom_tier.qk_norm_rope_cache`` for ``torch.compile``.
* ``int4_quantize`` / ``int4_dequantize``: quick all-reduce's INT4 codec; with
  ``quick_allreduce`` a reference two-shot quantized all-reduce and its error report.
"""

from __future__ import annotations

import torch

from . import ops as _ops  # noqa: F401  (registers torch.ops.atom_tier.qk_norm_rope_cache)
from .dispatch import find_aiter_fused_op, qk_norm_rope_cache, select_backend
from .int4_codec import int4_dequantize_triton, int4_quantize_triton
from .int4_reference import int4_dequantize_reference, int4_quantize_reference
from .kv_layout import split_flash_layer_cache, split_paged_layer_cache
from .qk_norm_rope_cache import LaunchConfig
from .quick_allreduce import all_reduce_error_report, two_shot_int4_all_reduce
from .reference import qk_norm_rope_cache_reference


def int4_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4-encode ``x`` (Triton on a GPU, torch elsewhere): ``(codes, scales)``."""
    return int4_quantize_triton(x) if x.is_cuda else int4_quantize_reference(x)


def int4_dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Decode what ``int4_quantize`` produced."""
    if codes.is_cuda:
        return int4_dequantize_triton(codes, scales)
    return int4_dequantize_reference(codes, scales)


__all__ = [
    "LaunchConfig",
    "all_reduce_error_report",
    "find_aiter_fused_op",
    "int4_dequantize",
    "int4_quantize",
    "qk_norm_rope_cache",
    "qk_norm_rope_cache_reference",
    "select_backend",
    "split_flash_layer_cache",
    "split_paged_layer_cache",
    "two_shot_int4_all_reduce",
]
