"""vLLM offloading metrics of atom-tier's secondary tiers, from their plain stats snapshots.

Each tier keeps plain counters and gauges (``tier_stats``); this turns them into the
definitions vLLM registers in /metrics and into the per-interval reports it collects.
"""

from __future__ import annotations

from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import (
    OffloadingCounterMetadata,
    OffloadingGaugeMetadata,
    OffloadingMetricMetadata,
)


def metric_definitions(
    prefix: str, what: str, counters: tuple[str, ...], gauges: tuple[str, ...]
) -> dict[str, OffloadingMetricMetadata]:
    """One counter per name in ``counters`` and one gauge per name in ``gauges``."""
    metrics: dict[str, OffloadingMetricMetadata] = {}
    for name in counters:
        metrics[prefix + name] = OffloadingCounterMetadata(
            documentation=f"atom-tier {what}: {name.replace('_', ' ')}."
        )
    for name in gauges:
        metrics[prefix + name] = OffloadingGaugeMetadata(
            documentation=f"atom-tier {what}: {name.replace('_', ' ')} (current)."
        )
    return metrics


class StatsReporter:
    """Counter increments since the previous report, and every gauge.

    Unchanged gauges are dropped once for all tiers by atom-tier's manager
    (``connector.metrics.drop_unchanged_gauges``) before a report leaves the engine.
    """

    def __init__(self, prefix: str, counters: tuple[str, ...], gauges: tuple[str, ...]) -> None:
        self._prefix = prefix
        self._counters = counters
        self._gauges = gauges
        self._last: dict[str, float] = {}

    def report(self, now: dict[str, float]) -> OffloadingConnectorStats | None:
        stats = OffloadingConnectorStats()
        for name in self._counters:
            delta = now[name] - self._last.get(name, 0.0)
            if delta:
                stats.increase_counter(self._prefix + name, delta)
        for name in self._gauges:
            stats.set_gauge(self._prefix + name, now[name])
        self._last = {name: now[name] for name in self._counters}
        return None if stats.is_empty() else stats
