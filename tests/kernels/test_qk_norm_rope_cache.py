"""Triton fused QK-norm + RoPE + KV-cache write against the torch reference.

Runs the Triton kernel on the GPU when there is one, else under the CPU interpreter (with the
exact casts of conftest.py). Every model dtype x FP8 format x rotary style x head dim x cache
layout, plus partial rotary, unquantized caches, padded slots and argument errors.
Tolerance: one step of the stored format (bf16/fp16/fp8), or 2^-20 of the largest value where
rotation cancels; >= 99% bit-identical. See
``kernels_testlib.assert_matches_reference`` for why one step can occur at all.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from atom_tier.kernels.qk_norm_rope_cache import LaunchConfig, qk_norm_rope_cache_triton
from atom_tier.kernels.reference import qk_norm_rope_cache_reference
from kernels_testlib import (
    FP8,
    HAS_GPU,
    FusedCase,
    assert_matches_reference,
    make_caches,
    make_case,
)

HEAD_DIMS = (64, 96, 128, 192, 256)
DTYPES = (torch.bfloat16, torch.float16)
BLOCK_SIZE = 16
NUM_BLOCKS = 4


def _skip_unsupported(cache_dtype: torch.dtype) -> None:
    if HAS_GPU and torch.version.hip is None and cache_dtype == torch.float8_e4m3fnuz:
        pytest.skip("float8_e4m3fnuz is an AMD format: Triton has no NVIDIA lowering for it")


def run_both(
    case: FusedCase,
    layout: str,
    cache_dtype: torch.dtype,
    is_neox: bool,
    *,
    with_k_out: bool = True,
    launch: LaunchConfig | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run kernel and reference on identical fresh buffers; return {name: (kernel, ref)}."""
    dev = case.qkv.device
    t, d = case.qkv.shape[0], case.head_dim
    outs = []
    for fn in ("triton", "reference"):
        kc, vc = make_caches(
            layout, cache_dtype, NUM_BLOCKS, BLOCK_SIZE, case.num_kv_heads, d, str(dev)
        )
        q = torch.full((t, case.num_heads, d), 7.0, dtype=case.qkv.dtype, device=dev)
        k = (
            torch.full((t, case.num_kv_heads, d), 7.0, dtype=case.qkv.dtype, device=dev)
            if with_k_out
            else None
        )
        args = (*case.tensors(), kc, vc, case.slot_mapping, case.k_scale, case.v_scale, q, k)
        kw = {
            "num_heads": case.num_heads,
            "num_kv_heads": case.num_kv_heads,
            "head_dim": d,
            "eps": case.eps,
            "is_neox": is_neox,
        }
        if fn == "triton":
            qk_norm_rope_cache_triton(*args, **kw, launch=launch or LaunchConfig(block_t=4))
        else:
            qk_norm_rope_cache_reference(*args, **kw)
        outs.append({"q_out": q, "k_out": k, "key_cache": kc, "value_cache": vc})
    return {n: (outs[0][n], outs[1][n]) for n in outs[0] if outs[0][n] is not None}


def check(results: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for name, (got, want) in results.items():
        assert_matches_reference(got, want, name)


MATRIX = list(itertools.product(DTYPES, FP8, (True, False), HEAD_DIMS, ("flash", "paged")))


@pytest.mark.parametrize(
    ("dtype", "cache_dtype", "is_neox", "head_dim", "layout"),
    MATRIX,
    ids=[
        f"{str(a)[6:]}-{str(b)[6:]}-{'neox' if c else 'gptj'}-d{d}-{e}" for a, b, c, d, e in MATRIX
    ],
)
def test_full_rotary_matches_reference(
    dtype: torch.dtype,
    cache_dtype: torch.dtype,
    is_neox: bool,
    head_dim: int,
    layout: str,
    device: str,
) -> None:
    _skip_unsupported(cache_dtype)
    case = make_case(head_dim=head_dim, dtype=dtype, device=device)
    results = run_both(case, layout, cache_dtype, is_neox)
    check(results)
    # The scales were picked so the FP8 range is exercised up to saturation.
    for name in ("key_cache", "value_cache"):
        assert results[name][1].float().abs().max() == torch.finfo(cache_dtype).max, name


PARTIAL = list(itertools.product((True, False), HEAD_DIMS, ("flash", "paged")))


@pytest.mark.parametrize(("is_neox", "head_dim", "layout"), PARTIAL)
def test_partial_rotary_matches_reference(
    is_neox: bool, head_dim: int, layout: str, device: str
) -> None:
    # GLM-style: rotary on a prefix of each head (half of it; a quarter for 192 -> 48).
    rotary_dim = head_dim // 4 if head_dim == 192 else head_dim // 2
    case = make_case(
        head_dim=head_dim, dtype=torch.bfloat16, rotary_dim=rotary_dim, device=device, seed=1
    )
    check(run_both(case, layout, torch.float8_e4m3fn, is_neox))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["flash", "paged"])
def test_unquantized_cache_matches_reference(dtype: torch.dtype, layout: str, device: str) -> None:
    case = make_case(head_dim=128, dtype=dtype, device=device, seed=2)
    check(run_both(case, layout, dtype, is_neox=True))


@pytest.mark.parametrize("block_t", [1, 2, 8])
def test_tokens_per_program_and_no_k_out(block_t: int, device: str) -> None:
    case = make_case(head_dim=96, dtype=torch.float16, num_tokens=9, device=device, seed=3)
    results = run_both(
        case,
        "flash",
        torch.float8_e4m3fn,
        False,
        with_k_out=False,
        launch=LaunchConfig(block_t=block_t),
    )
    assert "k_out" not in results
    check(results)


def test_negative_slots_leave_cache_untouched(device: str) -> None:
    case = make_case(head_dim=64, dtype=torch.bfloat16, num_tokens=6, device=device, seed=4)
    case.slot_mapping = torch.tensor([5, -1, 17, -1, 40, 63], device=device)
    results = run_both(case, "paged", torch.float8_e4m3fn, True)
    check(results)
    # Exactly the 4 valid tokens' slots changed from the 0x11 fill, in both caches.
    for name in ("key_cache", "value_cache"):
        got = results[name][0]
        raw = got.view(torch.uint8).reshape(-1)
        changed_slots = set()
        view = got.permute(0, 3, 1, 2, 4) if got.ndim == 5 else got.permute(0, 3, 1, 2)
        for blk in range(NUM_BLOCKS):
            for pos in range(BLOCK_SIZE):
                if (view[blk, pos].contiguous().view(torch.uint8) != 0x11).any():
                    changed_slots.add(blk * BLOCK_SIZE + pos)
        assert changed_slots == {5, 17, 40, 63}, name
        assert (raw == 0x11).sum() == raw.numel() - 4 * case.num_kv_heads * case.head_dim


def test_zero_tokens_is_a_no_op(device: str) -> None:
    case = make_case(head_dim=64, dtype=torch.bfloat16, num_tokens=0, device=device)
    results = run_both(case, "flash", torch.float8_e4m3fn, True)
    assert (results["key_cache"][0].view(torch.uint8) == 0x11).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, kc: (c.qkv[:, :-1], kc), "qkv must be"),
        (lambda c, kc: (c.qkv.float(), kc), "bfloat16 or float16"),
        (lambda c, kc: (c.qkv, kc.view(torch.uint8)), "cache dtype"),
        (lambda c, kc: (c.qkv, kc[..., :32]), "flash layout"),
    ],
)
def test_bad_arguments_raise_one_clear_error(mutate: object, message: str, device: str) -> None:
    case = make_case(head_dim=64, dtype=torch.bfloat16, device=device)
    kc, vc = make_caches("flash", torch.float8_e4m3fn, NUM_BLOCKS, BLOCK_SIZE, 2, 64, device)
    qkv, kc = mutate(case, kc)  # type: ignore[operator]
    q = torch.empty(7, 4, 64, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=message):
        qk_norm_rope_cache_triton(
            qkv,
            case.positions,
            case.q_weight,
            case.k_weight,
            case.cos_sin_cache,
            kc,
            vc,
            case.slot_mapping,
            case.k_scale,
            case.v_scale,
            q,
            None,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            eps=1e-6,
            is_neox=True,
        )
