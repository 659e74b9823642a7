"""Kernels are jitted on first launch, not at import.

``triton.jit`` decides at decoration time between a compiled kernel and the CPU interpreter
(``TRITON_INTERPRET``). Deferring it makes the choice independent of who imported this package
first, and keeps a compiled ``JITFunction`` available for ahead-of-time builds (``aot.py``)
even while the interpreter is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import triton
from triton.runtime.jit import JITFunction


class LazyKernel:
    """A Triton kernel body, jitted per interpreter mode on first use."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self._by_mode: dict[bool, Any] = {}

    def jitted(self) -> Any:
        interpret = bool(triton.knobs.runtime.interpret)
        kernel = self._by_mode.get(interpret)
        if kernel is None:
            kernel = self._by_mode[interpret] = triton.jit(self.fn)
        return kernel

    def __getitem__(self, grid: Any) -> Any:
        return self.jitted()[grid]

    def compiled_function(self) -> JITFunction:
        """A compiled-mode ``JITFunction`` for ``triton.compile`` (never the interpreter)."""
        return JITFunction(self.fn)


def lazy_kernel(fn: Callable[..., Any]) -> LazyKernel:
    return LazyKernel(fn)
