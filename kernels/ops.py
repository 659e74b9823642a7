"""``torch.ops.atom_tier.qk_norm_rope_cache``: the fused write as a torch custom op.

It mutates its outputs in place and returns nothing, the shape vLLM's own fused ops take, so a
graph pass can substitute it with ``auto_functionalized``. The fake implementation only checks
arguments, which is all ``torch.compile`` needs to trace through it.
"""

from __future__ import annotations

import torch

from .dispatch import qk_norm_rope_cache
from .qk_norm_rope_cache import validate_fused_args

OP_NAME = "atom_tier::qk_norm_rope_cache"


@torch.library.custom_op(OP_NAME, mutates_args=("q_out", "k_out", "key_cache", "value_cache"))
def qk_norm_rope_cache_op(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
    is_neox: bool,
) -> None:
    qk_norm_rope_cache(
        qkv,
        positions,
        q_weight,
        k_weight,
        cos_sin_cache,
        key_cache,
        value_cache,
        slot_mapping,
        k_scale,
        v_scale,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        eps=eps,
        is_neox=is_neox,
        q_out=q_out,
        k_out=k_out,
    )


@qk_norm_rope_cache_op.register_fake
def _qk_norm_rope_cache_fake(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
    is_neox: bool,
) -> None:
    validate_fused_args(
        qkv,
        positions,
        q_weight,
        k_weight,
        cos_sin_cache,
        key_cache,
        value_cache,
        slot_mapping,
        q_out,
        k_out,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
    )
