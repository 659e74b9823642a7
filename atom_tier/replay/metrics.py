"""The server's own cache figures, read from its Prometheus ``/metrics`` text.

vLLM counts prompt tokens served from a cache by the tier that supplied them in
``vllm:prompt_tokens_cached_by_source{source=...}`` (device = the GPU/KV pool's prefix cache,
host = DRAM tier, disk = NVMe/file tier, ...) and the prefilled ones in
``vllm:prompt_tokens_by_source{source="local_compute"}``. Counters are cumulative since the
server started, so a replay reports differences between two snapshots.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

HIT_METRIC = "vllm:prompt_tokens_cached_by_source"
SOURCE_METRIC = "vllm:prompt_tokens_by_source"
COMPUTED_SOURCE = "local_compute"
# Requests the server holds (gauges): a replay reads its final counters once these are 0.
BUSY_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# Display order of the tiers vLLM knows; others a server reports are appended by name.
KNOWN_TIERS = ("device", "host", "disk", "p2p", "external_unspecified")

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Every sample line of a Prometheus text exposition (comments and junk skipped)."""
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        samples.append(Sample(match.group(1), labels, value))
    return samples


def _sum_by(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for sample in samples:
        # prometheus_client prints counters with a `_total` suffix.
        if sample.name not in (name, name + "_total"):
            continue
        key = sample.labels.get(label)
        if key is not None:
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


@dataclass(frozen=True)
class CacheCounters:
    """Cumulative cache-hit tokens per tier and prefilled tokens, at one moment."""

    hits: Mapping[str, float] = field(default_factory=dict)
    computed: float = 0.0
    available: bool = False
    busy: float = 0.0  # requests running or waiting on the server at this moment

    @classmethod
    def from_text(cls, text: str) -> CacheCounters:
        samples = parse_prometheus(text)
        hits = _sum_by(samples, HIT_METRIC, "source")
        sources = _sum_by(samples, SOURCE_METRIC, "source")
        return cls(
            hits=hits,
            computed=sources.get(COMPUTED_SOURCE, 0.0),
            available=bool(hits) or bool(sources),
            busy=sum(s.value for s in samples if s.name in BUSY_METRICS),
        )

    def minus(self, earlier: CacheCounters) -> CacheCounters:
        """What happened between ``earlier`` and this snapshot (a restart reads as 0)."""
        tiers = set(self.hits) | set(earlier.hits)
        return CacheCounters(
            hits={t: max(0.0, self.hits.get(t, 0.0) - earlier.hits.get(t, 0.0)) for t in tiers},
            computed=max(0.0, self.computed - earlier.computed),
            available=self.available and earlier.available,
        )

    @property
    def hit_total(self) -> float:
        return sum(self.hits.values())


def sum_counters(snapshots: Sequence[CacheCounters]) -> CacheCounters:
    """Several servers' counters as one (the replicas of a multi-endpoint replay); available
    only when every server reported them."""
    hits: dict[str, float] = {}
    for snap in snapshots:
        for tier, value in snap.hits.items():
            hits[tier] = hits.get(tier, 0.0) + value
    return CacheCounters(
        hits=hits,
        computed=sum(s.computed for s in snapshots),
        available=bool(snapshots) and all(s.available for s in snapshots),
        busy=sum(s.busy for s in snapshots),
    )


def tier_order(seen: set[str] | list[str]) -> list[str]:
    """Known tiers in their fixed order, then any others by name, so runs compare column-wise."""
    extra = sorted(set(seen) - set(KNOWN_TIERS))
    return [*KNOWN_TIERS, *extra]
