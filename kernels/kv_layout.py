"""Paged KV-cache layouts of vLLM 0.32's ROCm attention backends, as the fused writer sees them.

vLLM 0.32 hands each attention layer one logical ``[B, H, N, C]`` view (blocks, head slots,
tokens per block, content) whose physical stride order is a ``KVCacheLayout`` (``LBHNC`` or
``LHBNC`` for the ROCm backends). The backends split it into key/value views before writing:

``"flash"`` (``ROCM_AITER_FA`` without the shuffle layout, ``ROCM_AITER_UNIFIED_ATTN``, and
    the CPU backend): the layer view is ``[B, num_kv_heads, N, 2 * head_dim]`` with K in the
    first half of the content and V in the second; the backends split it into two
    ``[B, N, num_kv_heads, head_dim]`` views that are *not* contiguous (``transpose(1, 2)``
    then ``split``). This is what AITER's fused QK-norm/RoPE/cache op writes with
    ``use_shuffle_layout=False``.

``"paged"`` (``ROCM_ATTN``): ``customize_spec`` publishes K and V as two head slots, so the
    layer view is ``[B, 2, N, num_kv_heads * head_dim]``; ``PagedAttention.split_kv_cache``
    reinterprets each slot's page as the x-packed key ``[B, num_kv_heads, head_dim // x, N,
    x]`` and the transposed value ``[B, num_kv_heads, head_dim, N]`` with ``x = 16 // itemsize``
    (16 for an FP8 cache). The native HIP reader ``chunked_prefill_paged_decode`` consumes it.

Both are supported, under either physical order, because the writer takes strides, not a
contiguity assumption: a layer of an ``LBHNC`` cache has K and V interleaved per page, an
``LHBNC`` one has them in separate planes. The AITER shuffle layout (value also x-packed along
the token axis) is not supported: vLLM disables the fused path for it as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLASH = "flash"
PAGED = "paged"


@dataclass(frozen=True)
class CacheGeometry:
    """Element strides that place element ``d`` of head ``h`` of the token at a slot.

    Key offset: ``block*k_block + pos*k_slot + h*k_head + (d // key_x)*k_dim_outer + d % key_x``
    (``key_x == 0`` means the head dim is contiguous: offset ``d``). Value offset:
    ``block*v_block + pos*v_slot + h*v_head + d*v_dim``.
    """

    layout: str
    num_blocks: int
    block_size: int
    key_x: int
    k_block: int
    k_slot: int
    k_head: int
    k_dim_outer: int
    v_block: int
    v_slot: int
    v_head: int
    v_dim: int

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size


def describe_kv_cache(
    key_cache: torch.Tensor, value_cache: torch.Tensor, num_kv_heads: int, head_dim: int
) -> CacheGeometry:
    """Validate a key/value cache pair and return its geometry (4-D: flash, 5-D: paged)."""
    if key_cache.dtype != value_cache.dtype:
        raise ValueError(
            f"key_cache ({key_cache.dtype}) and value_cache ({value_cache.dtype}) differ in dtype"
        )
    if key_cache.ndim == 4:
        nb, bs, nh, hd = key_cache.shape
        if value_cache.shape != key_cache.shape:
            raise ValueError(
                f"flash layout: value_cache {tuple(value_cache.shape)} must match key_cache "
                f"{tuple(key_cache.shape)} = [num_blocks, block_size, num_kv_heads, head_dim]"
            )
        if key_cache.stride(3) != 1 or value_cache.stride(3) != 1:
            raise ValueError("flash layout: the head dim of key_cache/value_cache must be dense")
        _check_heads(nh, hd, num_kv_heads, head_dim)
        ks, vs = key_cache.stride(), value_cache.stride()
        return CacheGeometry(FLASH, nb, bs, 0, ks[0], ks[1], ks[2], 0, vs[0], vs[1], vs[2], 1)
    if key_cache.ndim == 5:
        nb, nh, outer, bs, x = key_cache.shape
        if outer * x != head_dim or key_cache.stride(4) != 1:
            raise ValueError(
                f"paged layout: key_cache {tuple(key_cache.shape)} must be [num_blocks, "
                f"num_kv_heads, head_dim // x, block_size, x] with a dense x axis"
            )
        if value_cache.shape != (nb, nh, head_dim, bs):
            raise ValueError(
                f"paged layout: value_cache {tuple(value_cache.shape)} must be "
                f"[num_blocks, num_kv_heads, head_dim, block_size] = {(nb, nh, head_dim, bs)}"
            )
        _check_heads(nh, head_dim, num_kv_heads, head_dim)
        ks, vs = key_cache.stride(), value_cache.stride()
        return CacheGeometry(
            PAGED, nb, bs, x, ks[0], ks[3], ks[1], ks[2], vs[0], vs[3], vs[1], vs[2]
        )
    raise ValueError(
        f"key_cache must be 4-D (flash layout) or 5-D (paged layout), got {key_cache.ndim}-D"
    )


def _check_heads(nh: int, hd: int, num_kv_heads: int, head_dim: int) -> None:
    if nh != num_kv_heads or hd != head_dim:
        raise ValueError(
            f"cache holds {nh} heads of dim {hd}, expected num_kv_heads={num_kv_heads}, "
            f"head_dim={head_dim}"
        )


def token_major_views(
    key_cache: torch.Tensor, value_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views indexed ``[block, pos, head, ...]`` whose trailing dims flatten to ``head_dim``.

    The reference writer assigns through these, so it never depends on the strides.
    """
    if key_cache.ndim == 4:
        return key_cache, value_cache
    return key_cache.permute(0, 3, 1, 2, 4), value_cache.permute(0, 3, 1, 2)


def split_flash_layer_cache(
    layer_cache: torch.Tensor, head_dim: int, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a flash-layout layer view ``[B, num_kv_heads, N, 2*head_dim]`` into K and V views.

    ``dtype`` reinterprets the bytes (vLLM allocates an FP8 cache as uint8).
    """
    if layer_cache.ndim != 4 or layer_cache.shape[-1] != 2 * head_dim:
        raise ValueError(
            f"flash layer cache must be [B, num_kv_heads, N, 2*head_dim={2 * head_dim}], got "
            f"{tuple(layer_cache.shape)}"
        )
    if dtype is not None:
        layer_cache = layer_cache.view(dtype)
    key, value = layer_cache.transpose(1, 2).split(head_dim, dim=-1)
    return key, value


def split_paged_layer_cache(
    layer_cache: torch.Tensor,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a ROCM_ATTN layer view ``[B, 2, N, num_kv_heads*head_dim]`` into x-packed views.

    ``x`` is taken from the allocation's itemsize, as vLLM does, before any ``dtype`` view.
    """
    if layer_cache.ndim != 4 or layer_cache.shape[1] != 2:
        raise ValueError(
            f"paged layer cache must be [B, 2, N, num_kv_heads*head_dim], got "
            f"{tuple(layer_cache.shape)}"
        )
    x = 16 // layer_cache.element_size()
    if head_dim % x:
        raise ValueError(f"head_dim={head_dim} is not a multiple of x={x} for the paged layout")
    if dtype is not None:
        layer_cache = layer_cache.view(dtype)
    nb = layer_cache.shape[0]
    key = layer_cache[:, 0].view(nb, num_kv_heads, head_dim // x, -1, x)
    value = layer_cache[:, 1].view(nb, num_kv_heads, head_dim, -1)
    return key, value
