"""Per-tier metrics atom-tier adds to what vLLM's offloading already puts in /metrics.

vLLM 0.32 already emits, and atom-tier reuses as they are:

=============================================  ==========================================
``vllm:kv_offload_tiering_chunk_queries``       chunk lookups per tier (``tier`` label)
``vllm:kv_offload_tiering_chunk_hits``          chunk hits per tier
``vllm:kv_offload_store_bytes`` / ``_time``     device -> DRAM tier
``vllm:kv_offload_load_bytes`` / ``_time``      DRAM tier -> device
``vllm:kv_offload_tiering_write_bytes``/``_time``  DRAM -> secondary tier (NVMe), per tier
``vllm:kv_offload_tiering_read_bytes`` / ``_time``   secondary tier -> DRAM, per tier
``vllm:prompt_tokens_cached_by_source``         prompt tokens served per source (host, disk)
=============================================  ==========================================

What was missing, added here with the same ``tier`` label values (``0:primary`` is the DRAM
tier, ``1:<type>`` the first secondary tier) so the series join:

* ``atom_tier:kv_tier_chunk_misses`` (counter): chunk lookups a tier answered with a miss.
* ``atom_tier:kv_tier_used_bytes`` / ``atom_tier:kv_tier_capacity_bytes`` /
  ``atom_tier:kv_tier_usage_perc`` (gauges): how full each tier is. vLLM's
  ``kv_offload_cpu_cache_usage_perc`` only counts chunks pinned by in-flight transfers.

vLLM also writes every counter of an interval into one ``KV Transfer metrics`` INFO line
(``KVConnectorLogging.log``); :class:`AtomTierConnectorStats` leaves atom-tier's own metrics out of
that line (they are on /metrics), so the log keeps vLLM's summary and the per-request hit line.

Secondary tiers report their usage by offering ``tier_usage() -> (used_bytes, capacity_bytes)``
(duck-typed, so the tier code needs no import of this module).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import (
    OffloadingCounterMetadata,
    OffloadingGaugeMetadata,
    OffloadingMetricMetadata,
)
from vllm.v1.kv_offload.tiering.base import TieringOffloadingMetrics
from vllm.v1.kv_offload.tiering.metrics import PRIMARY_TIER_LABEL

CHUNK_MISSES = "atom_tier:kv_tier_chunk_misses"
USED_BYTES = "atom_tier:kv_tier_used_bytes"
CAPACITY_BYTES = "atom_tier:kv_tier_capacity_bytes"
USAGE_PERC = "atom_tier:kv_tier_usage_perc"
DRAM_TIER_LABEL: tuple[str] = PRIMARY_TIER_LABEL


@runtime_checkable
class ReportsUsage(Protocol):
    """A secondary tier that can say how full it is."""

    def tier_usage(self) -> tuple[int, int]: ...


OWN_PREFIX = "atom_tier:"


class AtomTierConnectorStats(OffloadingConnectorStats):
    """vLLM's offloading stats; its log summary (``reduce``) without atom-tier's metrics."""

    def reduce(self) -> dict[str, int | float]:
        return {k: v for k, v in super().reduce().items() if not k.startswith(OWN_PREFIX)}


def metric_definitions() -> dict[str, OffloadingMetricMetadata]:
    """Prometheus definitions of atom-tier's own per-tier metrics."""
    tier = ("tier",)
    return {
        CHUNK_MISSES: OffloadingCounterMetadata(
            documentation="Chunk lookups a tier answered with a miss, labeled by tier.",
            labelnames=tier,
        ),
        USED_BYTES: OffloadingGaugeMetadata(
            documentation="Bytes of KV held by a tier, labeled by tier.",
            labelnames=tier,
        ),
        CAPACITY_BYTES: OffloadingGaugeMetadata(
            documentation="Capacity of a tier in bytes, labeled by tier.",
            labelnames=tier,
        ),
        USAGE_PERC: OffloadingGaugeMetadata(
            documentation="Fraction of a tier's capacity holding KV (0.0-1.0), labeled by tier.",
            labelnames=tier,
        ),
    }


def drop_unchanged_gauges(
    stats: OffloadingConnectorStats, reported: dict[tuple[str, tuple[str, ...]], float]
) -> None:
    """Remove gauge values equal to the ones last reported; remember the others in ``reported``.

    Counters and histograms are increments and stay as they are.
    """
    types: dict[str, str] = stats.data.get("types", {})
    data: dict[str, dict[tuple[str, ...], Any]] = stats.data.get("data", {})
    for name in [name for name, kind in types.items() if kind == "gauge" and name in data]:
        values = data[name]
        for label, value in list(values.items()):
            if reported.get((name, label)) == value:
                del values[label]
            else:
                reported[(name, label)] = value
        if not values:
            del data[name]
            del types[name]


def _values(stats: OffloadingConnectorStats, name: str) -> dict[tuple[str, ...], Any]:
    # The payload is {"types": {...}, "data": {name: {labelvalues: value}}}, vLLM's own format.
    data: dict[str, dict[tuple[str, ...], Any]] = stats.data.get("data", {})
    return data.get(name, {})


def add_misses(stats: OffloadingConnectorStats) -> None:
    """Derive per-tier misses from the lookups and hits counted in the same interval."""
    hits = _values(stats, TieringOffloadingMetrics.CHUNK_HITS)
    for label, queries in list(_values(stats, TieringOffloadingMetrics.CHUNK_QUERIES).items()):
        stats.increase_counter(CHUNK_MISSES, max(queries - hits.get(label, 0), 0), label)


def set_usage(
    stats: OffloadingConnectorStats, label: tuple[str, ...], used: int, capacity: int
) -> None:
    stats.set_gauge(USED_BYTES, used, label)
    stats.set_gauge(CAPACITY_BYTES, capacity, label)
    stats.set_gauge(USAGE_PERC, used / capacity if capacity > 0 else 0.0, label)


def secondary_usage(
    tiers: Iterable[object], labels: Iterable[tuple[str, ...]]
) -> list[tuple[tuple[str, ...], int, int]]:
    """(label, used, capacity) of each secondary tier that reports its usage."""
    found = []
    for tier, label in zip(tiers, labels, strict=True):
        if isinstance(tier, ReportsUsage):
            used, capacity = tier.tier_usage()
            found.append((label, int(used), int(capacity)))
    return found
