"""Kernel tests: Triton's CPU interpreter when no GPU is present, with exact float casts.

Without a GPU every test runs its Triton kernel under ``TRITON_INTERPRET=1`` (the kernels are
jitted at first launch, so the mode set here applies whatever imported them first). Triton
3.9's interpreter rounds fp32->bf16 by truncation and converts fp32->fp8 (e4m3fn, e4m3fnuz)
with dropped carries, ties away from zero and wrong subnormals (triton-lang/triton#8322). The
``_exact_interpreter_casts`` fixture replaces the interpreter's float conversion with torch's
casts (round to nearest even, as the GPU instructions do), so kernels are compared with their
references at the tolerances a GPU needs, not loosened ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from kernels_testlib import HAS_GPU

DEVICE = "cuda" if HAS_GPU else "cpu"

_TL_TO_TORCH: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp64": torch.float64,
    "fp8e4nv": torch.float8_e4m3fn,
    "fp8e4b8": torch.float8_e4m3fnuz,
    "fp8e5": torch.float8_e5m2,
    "fp8e5b16": torch.float8_e5m2fnuz,
}


def torch_convert_float(original: Any) -> Any:
    """A drop-in for ``triton.runtime.interpreter._convert_float`` that casts with torch."""
    from triton._C.libtriton import ir

    def convert(data: np.ndarray, input_dtype: Any, output_dtype: Any, rounding_mode: Any) -> Any:
        src_t = _TL_TO_TORCH.get(input_dtype.name)
        dst_t = _TL_TO_TORCH.get(output_dtype.name)
        if src_t is None or dst_t is None or rounding_mode == ir.ROUNDING_MODE.RTZ:
            return original(data, input_dtype, output_dtype, rounding_mode)
        raw = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        out = torch.from_numpy(raw).view(src_t).to(dst_t).view(torch.uint8).numpy()
        return out.view(f"uint{output_dtype.primitive_bitwidth}").reshape(data.shape)

    convert.original = original  # type: ignore[attr-defined]
    return convert


@pytest.fixture(scope="session", autouse=True)
def _exact_interpreter_casts() -> Iterator[None]:
    if HAS_GPU:
        yield
        return
    import triton
    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    def call_interpreted(self: JITFunction, *args: Any, **kwargs: Any) -> Any:
        return interpreter.InterpretedFunction(self.fn)(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(triton.knobs.runtime, "interpret", True)
        # triton.language's own jitted helpers (tl.sum, ...) were built as compiled-mode
        # functions if triton was imported before this fixture ran; call them interpreted.
        mp.setattr(JITFunction, "__call__", call_interpreted)
        mp.setattr(interpreter, "_convert_float", torch_convert_float(interpreter._convert_float))
        yield


@pytest.fixture
def device() -> str:
    return DEVICE
