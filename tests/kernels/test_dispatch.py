"""Backend dispatch and the torch custom op.

AITER and ROCm cannot exist on this machine, so the AITER tests use a *fake* AMD ``aiter``
package written to a temporary directory (its op checks the arguments it is given against
AITER's signature as vLLM 0.32 calls it, then computes with the torch reference) and mock only
"this is a ROCm build" and "this tensor is on the GPU". Everything else is real.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import triton
from atom_tier.kernels import dispatch
from atom_tier.kernels.reference import qk_norm_rope_cache_reference
from kernels_testlib import HAS_GPU, make_caches, make_case

# CPU tensors throughout, with Triton's interpreter standing in for the GPU; a GPU run covers
# the kernels themselves in the other test modules.
pytestmark = pytest.mark.skipif(HAS_GPU, reason="dispatch is tested on the CPU (interpreter)")

FAKE_AMD_AITER_OP = """
import torch
from atom_tier.kernels.reference import qk_norm_rope_cache_reference

CALLS = []


def fused_qk_norm_rope_cache_pts_quant_shuffle(
    qkv, q_weight, k_weight, cos_sin_cache, positions, num_tokens, num_heads_q, num_heads_k,
    num_heads_v, head_dim, is_neox, eps, q_out, k_cache, v_cache, slot_mapping, k_scale,
    v_scale, k_out, v_out, return_kv, use_shuffle_layout, block_size, x, rotary_dim,
):
    assert num_tokens == qkv.shape[0] and num_heads_v == num_heads_k
    assert v_out is None and return_kv == (k_out is not None) and not use_shuffle_layout
    assert block_size == k_cache.shape[1] and x == 16 // k_cache.element_size()
    assert rotary_dim in (0, cos_sin_cache.shape[-1]) and (rotary_dim == 0) == (
        cos_sin_cache.shape[-1] == head_dim)
    CALLS.append(head_dim)
    qk_norm_rope_cache_reference(
        qkv, positions, q_weight, k_weight, cos_sin_cache, k_cache, v_cache, slot_mapping,
        k_scale, v_scale, q_out, k_out, num_heads=num_heads_q, num_kv_heads=num_heads_k,
        head_dim=head_dim, eps=eps, is_neox=is_neox)
"""


def _write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def clean_aiter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``aiter`` module cached before or after; AITER lookup cache cleared."""
    for name in [m for m in sys.modules if m == "aiter" or m.startswith("aiter.")]:
        monkeypatch.delitem(sys.modules, name)
    dispatch.find_aiter_fused_op.cache_clear()
    yield
    for name in [m for m in sys.modules if m == "aiter" or m.startswith("aiter.")]:
        del sys.modules[name]
    dispatch.find_aiter_fused_op.cache_clear()


@pytest.fixture
def fake_amd_aiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_aiter: None) -> Path:
    root = tmp_path / "fake_amd_aiter"
    _write_package(
        root,
        {
            "aiter/__init__.py": '"""FAKE AMD AITER for tests: only the fused op."""\n',
            "aiter/ops/__init__.py": "",
            "aiter/ops/fused_qk_norm_rope_cache_quant.py": FAKE_AMD_AITER_OP,
        },
    )
    monkeypatch.syspath_prepend(str(root))
    return root


def test_pypi_aiter_is_not_mistaken_for_amds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_aiter: None
) -> None:
    # PyPI's `aiter` is an async-iterator library: a top-level module and no `aiter.ops`.
    _write_package(
        tmp_path / "fake_pypi_aiter",
        {
            "aiter/__init__.py": "async def aiter_helper():\n    return None\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path / "fake_pypi_aiter"))
    monkeypatch.setattr(dispatch, "is_rocm_build", lambda: True)  # mock: a ROCm torch
    assert dispatch.find_aiter_fused_op() is None


def test_aiter_is_never_imported_outside_a_rocm_build(fake_amd_aiter: Path) -> None:
    assert not dispatch.is_rocm_build()
    assert dispatch.find_aiter_fused_op() is None
    assert "aiter" not in sys.modules


def _run(
    case: object, layout: str, backend: dispatch.Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    c = case  # FusedCase
    kc, vc = make_caches(layout, torch.float8_e4m3fnuz, 4, 16, c.num_kv_heads, c.head_dim, "cpu")
    k_out = torch.empty(c.qkv.shape[0], c.num_kv_heads, c.head_dim, dtype=c.qkv.dtype)
    q = dispatch.qk_norm_rope_cache(
        *c.tensors(),
        kc,
        vc,
        c.slot_mapping,
        c.k_scale,
        c.v_scale,
        num_heads=c.num_heads,
        num_kv_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        eps=c.eps,
        is_neox=True,
        k_out=k_out,
        backend=backend,
    )
    return q, k_out, kc, vc


@pytest.mark.parametrize(
    ("head_dim", "layout", "expected"),
    [
        (128, "flash", "aiter"),
        (64, "flash", "aiter"),
        (96, "flash", "triton"),
        (192, "flash", "triton"),
        (128, "paged", "triton"),
    ],
)
def test_auto_prefers_fake_aiter_where_it_supports_the_shape(
    fake_amd_aiter: Path,
    monkeypatch: pytest.MonkeyPatch,
    head_dim: int,
    layout: str,
    expected: str,
) -> None:
    monkeypatch.setattr(dispatch, "is_rocm_build", lambda: True)  # mock: a ROCm torch
    monkeypatch.setattr(dispatch, "on_gpu", lambda t: True)  # mock: tensors on the GPU
    case = make_case(head_dim=head_dim, dtype=torch.bfloat16, device="cpu")
    kc, _ = make_caches(layout, torch.float8_e4m3fnuz, 4, 16, 2, head_dim, "cpu")
    assert dispatch.select_backend(case.qkv, kc, head_dim) == expected

    got = _run(case, layout)
    calls = sys.modules["aiter.ops.fused_qk_norm_rope_cache_quant"].CALLS
    assert calls == ([head_dim] if expected == "aiter" else [])
    want = _run(case, layout, backend="torch")
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_partial_rotary_goes_to_fake_aiter_with_its_rotary_dim(
    fake_amd_aiter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "is_rocm_build", lambda: True)  # mock: a ROCm torch
    monkeypatch.setattr(dispatch, "on_gpu", lambda t: True)  # mock: tensors on the GPU
    case = make_case(head_dim=128, rotary_dim=64, dtype=torch.bfloat16, device="cpu")
    _run(case, "flash")  # the fake op asserts rotary_dim == 64 was passed
    assert sys.modules["aiter.ops.fused_qk_norm_rope_cache_quant"].CALLS == [128]


def test_explicit_backend_requests(clean_aiter: None, monkeypatch: pytest.MonkeyPatch) -> None:
    case = make_case(head_dim=64, dtype=torch.bfloat16, device="cpu")
    kc, _ = make_caches("flash", torch.float8_e4m3fn, 4, 16, 2, 64, "cpu")
    with pytest.raises(ValueError, match="AITER is not available"):
        dispatch.select_backend(case.qkv, kc, 64, "aiter")
    with pytest.raises(ValueError, match="backend must be"):
        dispatch.select_backend(case.qkv, kc, 64, "cuda")  # type: ignore[arg-type]
    monkeypatch.setattr(triton.knobs.runtime, "interpret", False)
    with pytest.raises(ValueError, match="needs GPU tensors"):
        dispatch.select_backend(case.qkv, kc, 64, "triton")
    assert dispatch.select_backend(case.qkv, kc, 64) == "torch"


def _op_args(cache_dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[object, ...]:
    head_dim = 64
    case = make_case(head_dim=head_dim, dtype=torch.bfloat16, device="cpu")
    kc, vc = make_caches("paged", cache_dtype, 4, 16, 2, head_dim, "cpu")
    q = torch.empty(7, 4, head_dim, dtype=torch.bfloat16)
    k = torch.empty(7, 2, head_dim, dtype=torch.bfloat16)
    return (
        *case.tensors(),
        kc,
        vc,
        case.slot_mapping,
        case.k_scale,
        case.v_scale,
        q,
        k,
        4,
        2,
        head_dim,
        1e-6,
        True,
    )


def test_custom_op_passes_opcheck() -> None:
    # Schema, fake implementation and mutation annotations, checked by torch itself (with a
    # bf16 cache: opcheck's own comparisons have no CPU kernels for fp8 tensors).
    torch.library.opcheck(
        torch.ops.atom_tier.qk_norm_rope_cache.default,
        _op_args(torch.bfloat16),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


def test_custom_op_traces_under_torch_compile() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> object:
        graphs.append(gm)
        return gm.forward

    def prologue(*args: object) -> torch.Tensor:
        torch.ops.atom_tier.qk_norm_rope_cache(*args)
        return args[10] * 2  # type: ignore[operator]  # consumes q_out

    eager_args, compiled_args = _op_args(), _op_args()
    expected = prologue(*eager_args)
    for backend in (capture, "aot_eager"):
        got = torch.compile(prologue, backend=backend, fullgraph=True)(*compiled_args)
        assert torch.equal(got, expected)
        for a, b in zip(compiled_args[5:7], eager_args[5:7], strict=True):  # the caches
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert torch.ops.atom_tier.qk_norm_rope_cache.default in targets or any(
        "qk_norm_rope_cache" in str(t) for t in targets
    )


def test_reference_is_what_torch_backend_runs() -> None:
    case = make_case(head_dim=64, dtype=torch.float16, device="cpu")
    got = _run(case, "flash", backend="torch")
    kc, vc = make_caches("flash", torch.float8_e4m3fnuz, 4, 16, 2, 64, "cpu")
    q = torch.empty(7, 4, 64, dtype=torch.float16)
    k = torch.empty(7, 2, 64, dtype=torch.float16)
    qk_norm_rope_cache_reference(
        *case.tensors(),
        kc,
        vc,
        case.slot_mapping,
        case.k_scale,
        case.v_scale,
        q,
        k,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        eps=case.eps,
        is_neox=True,
    )
    for a, b in zip(got, (q, k, kc, vc), strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
