"""vLLM's periodic "KV Transfer metrics" log line, through vLLM's own KVConnectorLogging."""

from __future__ import annotations

from vllm.config import KVTransferConfig
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorLogging
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)

from atom_tier.connector.metrics import AtomTierConnectorStats
from atom_tier.plugin import register


def _interval(step: int) -> dict[str, object]:
    stats = OffloadingConnectorStats()
    stats.increase_counter("vllm:kv_offload_tiering_chunk_hits", 2, ("1:AtomTierNvmeTier",))
    stats.increase_counter("atom_tier:nvme_tier_reads", step)
    stats.set_gauge("atom_tier:shared_tier_breaker_open", 0)
    return stats.data


def test_the_log_line_keeps_vllms_counters_and_drops_atom_tiers() -> None:
    register()
    logging = KVConnectorLogging(
        KVTransferConfig(kv_connector="AtomTierConnector", kv_role="kv_both")
    )
    for step in (1, 2):
        logging.observe(_interval(step))
    assert isinstance(logging.transfer_stats_accumulator, AtomTierConnectorStats)
    lines: list[str] = []
    logging.log(log_fn=lambda fmt, *args: lines.append(fmt % args))
    [line] = lines
    assert "vllm:kv_offload_tiering_chunk_hits:('1:AtomTierNvmeTier',)=4" in line
    assert "atom_tier:" not in line
    # Prometheus still gets everything: the data itself is untouched.
    merged = AtomTierConnectorStats(data=_interval(3))
    assert "atom_tier:nvme_tier_reads" in merged.data["data"]
