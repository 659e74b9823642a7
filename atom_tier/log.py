"""Loggers for atom-tier.

They live under the `vllm` logger namespace so that inside a vLLM process atom-tier's lines go
through vLLM's own handlers and format (and its VLLM_LOGGING_LEVEL); outside vLLM they are plain
standard-library loggers.
"""

from __future__ import annotations

import logging

ROOT = "vllm.atom_tier"


def get_logger(module: str) -> logging.Logger:
    """A logger for an atom-tier module: pass `__name__`."""
    suffix = module.removeprefix("atom_tier").lstrip(".")
    return logging.getLogger(f"{ROOT}.{suffix}" if suffix else ROOT)
