"""The value types of atom-tier's settings: the enums a variable may name, and the error a bad
value raises. Kept apart from :mod:`atom_tier.settings` (which reads the environment) so the
settings module stays readable in one sitting; ``atom_tier.settings`` re-exports every name.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic.fields import FieldInfo


class SettingsError(ValueError):
    """A variable holds a value atom-tier cannot use; the message names it and what is allowed.

    ``problems``: (variable, what is wrong with it) for each bad variable.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(text for _, text in problems))
        self.problems = problems


class QuickReduce(str, Enum):
    """Quick all-reduce quantization (vLLM ``VLLM_ROCM_QUICK_REDUCE_QUANTIZATION`` names)."""

    INT4 = "INT4"
    INT6 = "INT6"
    INT8 = "INT8"
    FP = "FP"
    NONE = "NONE"


class ConnectorEngine(str, Enum):
    """Which engine serves the tiered KV cache."""

    NATIVE = "native"
    LMCACHE = "lmcache"
    OFF = "off"


class KvCacheDtype(str, Enum):
    """KV cache dtype atom-tier asks for when the user left vLLM's at ``auto``."""

    FP8 = "fp8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"
    AUTO = "auto"


class EvictionPolicy(str, Enum):
    """Eviction policy of the DRAM tier: vLLM's LRU and ARC, or atom-tier's sticky policy for
    agentic sessions (``atom_tier.tiers.eviction``)."""

    LRU = "lru"
    ARC = "arc"
    STICKY = "sticky"


def allowed_values(field: FieldInfo) -> str:
    """What a setting accepts, in words, for the message of a bad value."""
    annotation = field.annotation
    for candidate in getattr(annotation, "__args__", (annotation,)):
        if isinstance(candidate, type) and issubclass(candidate, Enum):
            return "one of " + ", ".join(str(m.value) for m in candidate)
    bounds = []
    for constraint in field.metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(constraint, attr, None) is not None:
                bounds.append(f"{symbol} {getattr(constraint, attr)}")
    kinds = {bool: "true or false", int: "an integer", float: "a number", Path: "a path"}
    for kind, text in kinds.items():
        if kind in getattr(annotation, "__args__", (annotation,)):
            return " ".join([text, *bounds])
    return str(annotation)
