"""Scheduler side: the region name fix and the per-tier metrics, on vLLM's real tiering manager."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from vllm.distributed.kv_transfer.kv_connector.v1.offloading.metrics import (
    OffloadingConnectorStats,
)
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key
from vllm.v1.kv_offload.tiering.base import TieringOffloadingMetrics
from vllm.v1.kv_offload.tiering.manager import (
    CPUPrimaryTierOffloadingManager,
    TieringOffloadingManager,
)

from atom_tier.connector import metrics
from atom_tier.connector.manager import MeteredTieringManager, tier_label
from atom_tier.connector.region import AtomTierSharedRegion, drop_region_name, region_path
from tests.conftest import make_offloading_config

CHUNK = 4096


def new_region(engine: str, rank: int | None, chunks: int = 4) -> AtomTierSharedRegion:
    return AtomTierSharedRegion(
        engine_id=engine,
        num_chunks=chunks,
        rank=rank,
        kv_bytes_per_chunk=CHUNK,
        cpu_page_size=CHUNK,
    )


@pytest.fixture
def engine() -> Iterator[str]:
    name = f"atom-tier-test-{uuid.uuid4().hex}"
    yield name
    drop_region_name(name)


def test_dropped_name_keeps_the_memory_shared(engine: str) -> None:
    worker = new_region(engine, rank=0)  # creates the file, as vLLM's worker does
    scheduler = new_region(engine, rank=None)  # joins it, as vLLM's scheduler does
    assert drop_region_name(engine)
    assert not region_path(engine).exists()
    worker.create_next_worker_view(CHUNK)[2, :4] = 42
    assert scheduler.base_tensor[2 * CHUNK : 2 * CHUNK + 4].tolist() == [42] * 4
    scheduler.cleanup()
    worker.cleanup()  # the creator finds no name to remove: no error, nothing recreated
    assert not region_path(engine).exists()
    assert not drop_region_name(engine)


def test_cleanup_still_removes_its_own_name(engine: str) -> None:
    region = new_region(engine, rank=0)
    assert region_path(engine).exists()
    region.cleanup()
    assert not region_path(engine).exists()


def test_cleanup_leaves_another_engines_file_alone(engine: str) -> None:
    region = new_region(engine, rank=0)
    drop_region_name(engine)
    # A new server reusing the engine id created a file of the same name meanwhile.
    fd = os.open(region_path(engine), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    region.cleanup()
    assert region_path(engine).exists()


@pytest.fixture
def metered(engine: str) -> Iterator[MeteredTieringManager]:
    region = new_region(engine, rank=None, chunks=4)
    primary = CPUPrimaryTierOffloadingManager(num_chunks=4, mmap_region=region)
    manager = MeteredTieringManager(TieringOffloadingManager(primary), dram_chunk_bytes=CHUNK)
    yield manager
    manager.shutdown()


def values(stats: OffloadingConnectorStats, name: str) -> dict[tuple[str, ...], float]:
    return dict(stats.data["data"].get(name, {}))


def test_usage_and_misses_on_the_real_tiering_manager(metered: MeteredTieringManager) -> None:
    request = ReqContext(req_id="r1")
    metered.on_new_request(request)
    keys = [make_offload_key(bytes([i]) * 32, 0) for i in range(3)]
    output = metered.prepare_store(keys[:2], request)
    assert output is not None and output.keys_to_store == keys[:2]
    metered.complete_store(keys[:2], request)
    assert [metered.lookup(k, request) for k in keys] == [
        LookupResult.HIT,
        LookupResult.HIT,
        LookupResult.MISS,
    ]
    stats = metered.get_stats()
    assert stats is not None
    dram = metrics.DRAM_TIER_LABEL
    assert values(stats, TieringOffloadingMetrics.CHUNK_QUERIES)[dram] == 3
    assert values(stats, TieringOffloadingMetrics.CHUNK_HITS)[dram] == 2
    assert values(stats, metrics.CHUNK_MISSES)[dram] == 1
    assert values(stats, metrics.USED_BYTES)[dram] == 2 * CHUNK
    assert values(stats, metrics.CAPACITY_BYTES)[dram] == 4 * CHUNK
    assert values(stats, metrics.USAGE_PERC)[dram] == 0.5
    # Counters restart each interval and gauges are sent only when they change: an idle
    # step reports nothing (a non-empty report costs a round of Prometheus work per step).
    assert metered.get_stats() is None
    metered.prepare_store(keys[2:], request)
    metered.complete_store(keys[2:], request)
    again = metered.get_stats()
    assert again is not None
    assert metrics.CHUNK_MISSES not in again.data["data"]
    assert values(again, metrics.USED_BYTES)[dram] == 3 * CHUNK
    assert values(again, metrics.USAGE_PERC)[dram] == 0.75
    assert metered.get_stats() is None
    metered.on_request_finished(request)


def test_every_added_metric_has_a_definition() -> None:
    from atom_tier.connector.spec import AtomTierOffloadingSpec

    definitions = AtomTierOffloadingSpec.build_metric_definitions({})
    for name in (metrics.CHUNK_MISSES, metrics.USED_BYTES, metrics.CAPACITY_BYTES):
        assert definitions[name].labelnames == ("tier",)
    # vLLM's own tiering metrics stay defined (the stats payload uses them).
    assert TieringOffloadingMetrics.CHUNK_HITS in definitions


class _Tier:
    tier_type = "nvme"

    def tier_usage(self) -> tuple[int, int]:
        return 10, 40


def test_secondary_tiers_report_usage_when_they_can() -> None:
    tiers = [_Tier(), object()]
    labels = [tier_label(0, "nvme"), tier_label(1, "fs")]
    assert metrics.secondary_usage(tiers, labels) == [(("1:nvme",), 10, 40)]


def test_a_dram_tier_smaller_than_one_chunk_is_refused() -> None:
    from vllm.v1.kv_offload.config import OffloadingCacheConfig

    from atom_tier.connector.spec import AtomTierOffloadingSpec

    config = make_offloading_config(  # chunks of 2 blocks x 64 KiB: 128 KiB > 100,000 bytes
        extra_config={"cpu_bytes_to_use": 100_000},
        cache=OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=2),
    )
    with pytest.raises(ValueError, match=r"smaller than one chunk .*ATOM_TIER_DRAM_GB"):
        AtomTierOffloadingSpec(config)
