"""The fused kernel against vLLM 0.32 itself: its KV-cache allocations and its rotary embedding.

* Layer caches are laid out with vLLM's own ``compute_layout_strides`` for the specs the ROCm
  backends publish (``ROCM_ATTN``: two head slots of ``num_kv_heads * head_dim``; the AITER
  backends: ``num_kv_heads`` slots of ``2 * head_dim``), under both stride orders they accept
  (``LBHNC``, ``LHBNC``), with two layers sharing one allocation. The kernel writes layer 1;
  layer 0 must stay untouched, and every written byte must sit where vLLM's readers look:
  ``PagedAttention.split_kv_cache``'s views for ``ROCM_ATTN``, ``transpose(1, 2).split`` for
  the flash layout, and an independent byte-offset computation.
* vLLM's ``RotaryEmbedding`` (its cos/sin table and ``forward_static``) agrees with the
  reference's rotation in fp32.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from kernels_testlib import make_case

vllm_iface = pytest.importorskip("vllm.v1.kv_cache_interface")
from atom_tier.kernels.kv_layout import (  # noqa: E402
    split_flash_layer_cache,
    split_paged_layer_cache,
)
from atom_tier.kernels.qk_norm_rope_cache import (  # noqa: E402
    LaunchConfig,
    qk_norm_rope_cache_triton,
)
from atom_tier.kernels.reference import (  # noqa: E402
    apply_rotary_fp32,
    qk_norm_rope_fp32,
    quantize_for_cache,
)
from vllm.v1.attention.ops.paged_attn import PagedAttention  # noqa: E402
from vllm.v1.kv_cache_layout import KVCacheLayout  # noqa: E402

NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEADS = 4, 16, 2, 4


def vllm_layer_caches(
    backend: str, layout: KVCacheLayout, head_dim: int, device: str
) -> list[torch.Tensor]:
    """Two layers' ``[B, H, N, C]`` uint8 views over one allocation, as vLLM builds them."""
    spec = vllm_iface.FullAttentionSpec(
        block_size=BLOCK_SIZE, num_kv_heads=KV_HEADS, head_size=head_dim, dtype=torch.uint8
    )
    if backend == "ROCM_ATTN":  # RocmAttentionBackend.customize_spec
        spec = dataclasses.replace(spec, num_head_slots=2, state_content_bytes=KV_HEADS * head_dim)
    shape = (2, *vllm_iface.compute_layer_kv_cache_shape_bytes(spec, NUM_BLOCKS))
    strides = vllm_iface.compute_layout_strides(spec, NUM_BLOCKS, 2, layout)
    raw = torch.full((int(torch.Size(shape).numel()),), 0x11, dtype=torch.uint8, device=device)
    view = torch.as_strided(raw, shape, strides)
    return [view[0], view[1]]


CASES = list(
    itertools.product(
        ("ROCM_ATTN", "ROCM_AITER_FA"), (KVCacheLayout.LBHNC, KVCacheLayout.LHBNC), (64, 192)
    )
)


@pytest.mark.parametrize(
    ("backend", "layout", "head_dim"), CASES, ids=[f"{b}-{lay.name}-d{d}" for b, lay, d in CASES]
)
def test_writes_land_where_vllm_reads(
    backend: str, layout: KVCacheLayout, head_dim: int, device: str
) -> None:
    fp8 = torch.float8_e4m3fn
    layers = vllm_layer_caches(backend, layout, head_dim, device)
    if backend == "ROCM_ATTN":
        kc, vc = split_paged_layer_cache(layers[1], KV_HEADS, head_dim, dtype=fp8)
        # vLLM's own split (on the K/V-first transpose, as RocmAttentionImpl does).
        vk, vv = PagedAttention.split_kv_cache(layers[1].transpose(0, 1), KV_HEADS, head_dim)
        assert vk.shape == kc.shape and vk.stride() == kc.stride()
        assert vv.shape == vc.shape and vv.stride() == vc.stride()
        assert vk.data_ptr() == kc.data_ptr() and vv.data_ptr() == vc.data_ptr()
    else:
        kc, vc = split_flash_layer_cache(layers[1], head_dim, dtype=fp8)
    case = make_case(
        head_dim=head_dim,
        dtype=torch.bfloat16,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        num_tokens=6,
        num_slots=NUM_BLOCKS * BLOCK_SIZE,
        device=device,
    )
    q = torch.empty(6, HEADS, head_dim, dtype=torch.bfloat16, device=device)
    qk_norm_rope_cache_triton(
        *case.tensors(),
        kc,
        vc,
        case.slot_mapping,
        case.k_scale,
        case.v_scale,
        q,
        None,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_dim=head_dim,
        eps=case.eps,
        is_neox=True,
        launch=LaunchConfig(block_t=4),
    )
    assert (layers[0] == 0x11).all(), "layer 0 of the shared allocation was written"

    _, k, v = qk_norm_rope_fp32(
        case.qkv,
        case.positions,
        case.q_weight,
        case.k_weight,
        case.cos_sin_cache,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        head_dim=head_dim,
        eps=case.eps,
        is_neox=True,
    )
    kq = quantize_for_cache(k, case.k_scale, fp8).view(torch.uint8).cpu()
    vq = quantize_for_cache(v, case.v_scale, fp8).view(torch.uint8).cpu()
    layer = layers[1].cpu()
    x = 16  # bytes per x-pack of an FP8 key, vLLM: 16 // itemsize of the uint8 allocation
    written = 0
    for t, slot in enumerate(case.slot_mapping.tolist()):
        if slot < 0:
            continue
        blk, pos = divmod(slot, BLOCK_SIZE)
        for h in range(KV_HEADS):
            for d in range(0, head_dim, 7):
                if backend == "ROCM_ATTN":  # page [2][N][H*hs]: K slot 0, V slot 1
                    k_at = layer[blk, 0].view(-1)[
                        h * head_dim * BLOCK_SIZE + (d // x) * BLOCK_SIZE * x + pos * x + d % x
                    ]
                    v_at = layer[blk, 1].view(-1)[(h * head_dim + d) * BLOCK_SIZE + pos]
                else:  # page [H][N][2*hs]: K then V per token
                    k_at = layer[blk, h, pos, d]
                    v_at = layer[blk, h, pos, head_dim + d]
                assert int(k_at) == int(kq[t, h, d]), (t, h, d)
                assert int(v_at) == int(vq[t, h, d]), (t, h, d)
                written += 1
    assert written > 0
    # Nothing outside the valid tokens' K/V bytes changed.
    valid = int((case.slot_mapping >= 0).sum())
    assert int((layer != 0x11).sum()) <= valid * KV_HEADS * head_dim * 2


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize(("head_dim", "rotary_dim"), [(128, 128), (128, 64), (192, 48)])
def test_rotation_matches_vllm_rotary_embedding(
    is_neox: bool, head_dim: int, rotary_dim: int
) -> None:
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    with set_current_vllm_config(VllmConfig()):
        rope = RotaryEmbedding(head_dim, rotary_dim, 4096, 1_000_000.0, is_neox, torch.float32)
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 4096, (9,), generator=g)
    q = torch.randn(9, HEADS * head_dim, generator=g)
    k = torch.randn(9, KV_HEADS * head_dim, generator=g)
    vq, vk = RotaryEmbedding.forward_static(
        pos, q.clone(), k.clone(), head_dim, rotary_dim, rope.cos_sin_cache, is_neox
    )
    cos, sin = rope.cos_sin_cache.index_select(0, pos).chunk(2, dim=-1)
    ours_q = apply_rotary_fp32(q.view(9, HEADS, head_dim), cos, sin, rotary_dim, is_neox)
    ours_k = apply_rotary_fp32(k.view(9, KV_HEADS, head_dim), cos, sin, rotary_dim, is_neox)
    torch.testing.assert_close(ours_q.reshape(9, -1), vq, rtol=0, atol=0)
    assert vk is not None
    torch.testing.assert_close(ours_k.reshape(9, -1), vk, rtol=0, atol=0)
