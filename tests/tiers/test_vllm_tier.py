"""The NVMe tier inside vLLM 0.32's own TieringOffloadingSpec and TieringOffloadingManager.

No server: the spec is built from a real OffloadingConfig with the tier entry produced by
``nvme_secondary_tier_config``, and the test plays the GPU worker's part (filling DRAM-tier
slots) while vLLM's manager decides cascades, evictions and promotions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm.v1.kv_offload.base import (
    LookupResult,
    Medium,
    ReqContext,
    ScheduleEndContext,
    make_offload_key,
)
from vllm.v1.kv_offload.config import (
    OffloadingModelConfig,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec
from vllm.v1.kv_offload.tiering.manager import TieringOffloadingManager
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

from atom_tier.settings import load_settings
from atom_tier.sizing import GIB as BYTES_PER_GB
from atom_tier.tiers import nvme_secondary_tier_config
from atom_tier.tiers.chunk_format import HEADER_BLOCK, chunk_relpath
from atom_tier.tiers.vllm_tier import METRIC_PREFIX, AtomTierNvmeTier
from tests.conftest import make_offloading_config
from tests.tiers.conftest import payload_for

DRAM_CHUNKS = 4
CHUNK_BYTES = 64 * 1024
END_OF_STEP = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())


def _spec(
    root: Path,
    gb: str = "1",
    model: str = "tiny-model",
    weights: str | None = "weights-v1",
    events: bool = False,
) -> TieringOffloadingSpec:
    """A spec whose NVMe tier entry carries an identity (an operator's weights id, so no
    weight files are needed); ``weights=None`` leaves the entry without one."""
    settings = load_settings({"ATOM_TIER_NVME_PATH": str(root), "ATOM_TIER_NVME_GB": gb})
    identity = None if weights is None else {"model": model, "numerics": "n", "weights_id": weights}
    tier = nvme_secondary_tier_config(settings, identity)
    assert tier is not None
    config = make_offloading_config(
        worker_kv_bytes_per_block=CHUNK_BYTES,
        extra_config={"cpu_bytes_to_use": DRAM_CHUNKS * CHUNK_BYTES, "secondary_tiers": [tier]},
        engine_id=f"atom-tier-test-{uuid.uuid4().hex[:8]}",
        model=OffloadingModelConfig(model, "bfloat16"),
        enable_kv_cache_events=events,
    )
    return TieringOffloadingSpec(config)


@pytest.fixture
def open_manager() -> Iterator[Callable[..., tuple[TieringOffloadingManager, AtomTierNvmeTier]]]:
    managers: list[TieringOffloadingManager] = []

    def factory(root: Path, **options: Any) -> tuple[TieringOffloadingManager, AtomTierNvmeTier]:
        manager = _spec(root, **options).get_manager()
        assert isinstance(manager, TieringOffloadingManager)
        managers.append(manager)
        (tier,) = manager.secondary_tiers
        assert isinstance(tier, AtomTierNvmeTier)
        assert tier.store.wait_ready(30)
        return manager, tier

    yield factory
    for manager in managers:
        manager.shutdown()


def _key(i: int) -> Any:
    return make_offload_key(i.to_bytes(32, "big"), 0)


def _rows(manager: TieringOffloadingManager) -> memoryview:
    return manager.primary_tier.get_kv_memoryview().cast("B")


def _store(manager: TieringOffloadingManager, req: ReqContext, ids: range) -> None:
    """What the connector and GPU worker do: allocate DRAM slots, fill them, complete."""
    keys = [_key(i) for i in ids]
    prepared = manager.prepare_store(keys, req)
    assert prepared is not None
    spec = prepared.store_spec
    assert isinstance(spec, CPULoadStoreSpec)
    rows = _rows(manager)
    for key, chunk in zip(prepared.keys_to_store, spec.chunk_ids, strict=True):
        start = int(chunk) * CHUNK_BYTES
        rows[start : start + CHUNK_BYTES] = payload_for(key, CHUNK_BYTES)
    manager.complete_store(prepared.keys_to_store, req)


def _steps_until(manager: TieringOffloadingManager, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, "the tier did not finish its jobs"
        manager.on_schedule_end(END_OF_STEP)
        time.sleep(0.005)


def _load(manager: TieringOffloadingManager, req: ReqContext, i: int) -> bytes | None:
    """Look a chunk up until vLLM's manager settles; its DRAM bytes when it is a hit."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = manager.lookup(_key(i), req)
        if result is LookupResult.HIT:
            spec = manager.prepare_load([_key(i)], req)
            assert isinstance(spec, CPULoadStoreSpec)
            start = int(spec.chunk_ids[0]) * CHUNK_BYTES
            data = bytes(_rows(manager)[start : start + CHUNK_BYTES])
            manager.complete_load([_key(i)], req)
            return data
        if result is LookupResult.MISS:
            return None
        manager.on_schedule_end(END_OF_STEP)
        time.sleep(0.005)
    raise AssertionError("lookup never settled")


def _fill_and_evict(manager: TieringOffloadingManager, tier: AtomTierNvmeTier) -> ReqContext:
    req = ReqContext(req_id="writer")
    manager.on_new_request(req)
    for first in range(0, 12, 2):  # 12 chunks through a 4-chunk DRAM tier
        _store(manager, req, range(first, first + 2))
        _steps_until(manager, lambda: not tier.has_pending_work())
    manager.on_request_finished(req)
    return req


def test_chunks_evicted_from_dram_come_back_from_nvme(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path)
    _fill_and_evict(manager, tier)
    assert tier.stats()["writes"] == 12
    reader = ReqContext(req_id="reader")
    manager.on_new_request(reader)
    assert _load(manager, reader, 0) == payload_for(_key(0), CHUNK_BYTES)  # promoted
    stats = tier.stats()
    assert stats["reads"] == 1 and stats["hits"] >= 1
    assert _load(manager, reader, 999) is None
    manager.on_request_finished(reader)


def test_chunks_written_to_disk_are_published_as_kv_events(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path, events=True)
    _fill_and_evict(manager, tier)
    events = list(tier.take_events())
    assert [k for e in events for k in e.keys] == [_key(i) for i in range(12)]
    assert all(e.medium is Medium.STORAGE and not e.removed for e in events)
    assert list(tier.take_events()) == []
    quiet, quiet_tier = open_manager(tmp_path / "quiet")
    _fill_and_evict(quiet, quiet_tier)
    assert list(quiet_tier.take_events()) == []  # vLLM's KV events are off


def test_restart_serves_what_the_previous_process_wrote(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path)
    _fill_and_evict(manager, tier)
    manager.shutdown()
    again, again_tier = open_manager(tmp_path)
    assert again_tier.stats()["rebuild_chunks"] == 12
    reader = ReqContext(req_id="after-restart")
    again.on_new_request(reader)
    for i in (0, 5, 11):
        assert _load(again, reader, i) == payload_for(_key(i), CHUNK_BYTES)
    again.on_request_finished(reader)


def test_a_corrupt_chunk_is_recomputed_never_served(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path)
    _fill_and_evict(manager, tier)
    path = tier.store.root / chunk_relpath(tier.store.digest(_key(1)))
    with open(path, "r+b") as f:
        f.seek(HEADER_BLOCK + 7)
        f.write(b"\x00\x01\x02")
    reader = ReqContext(req_id="reader")
    manager.on_new_request(reader)
    assert _load(manager, reader, 1) is None  # promotion failed: vLLM sees a miss
    assert _load(manager, reader, 1) is None  # and is not offered the chunk again
    assert tier.stats()["corrupt_checksum"] == 1 and not path.exists()
    assert _load(manager, reader, 2) == payload_for(_key(2), CHUNK_BYTES)
    manager.on_request_finished(reader)


def test_another_model_never_sees_these_chunks(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path)
    _fill_and_evict(manager, tier)
    other, other_tier = open_manager(tmp_path, model="another-model")
    assert other_tier.store.root != tier.store.root
    reader = ReqContext(req_id="other")
    other.on_new_request(reader)
    assert _load(other, reader, 0) is None
    other.on_request_finished(reader)


def test_other_weights_under_the_same_model_name_never_see_these_chunks(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path)
    _fill_and_evict(manager, tier)
    manager.shutdown()
    updated, updated_tier = open_manager(tmp_path, weights="weights-v2")
    assert updated_tier.store.root != tier.store.root
    assert updated_tier.stats()["rebuild_chunks"] == 0
    reader = ReqContext(req_id="after-update")
    updated.on_new_request(reader)
    assert _load(updated, reader, 0) is None
    updated.on_request_finished(reader)


def test_an_entry_without_identity_never_reuses_another_runs_chunks(
    tmp_path: Path, open_manager: Callable[..., Any]
) -> None:
    manager, tier = open_manager(tmp_path, weights=None)
    assert tier.identity.source == "unverified"
    _fill_and_evict(manager, tier)
    manager.shutdown()
    again, again_tier = open_manager(tmp_path, weights=None)
    assert again_tier.store.root != tier.store.root
    reader = ReqContext(req_id="after-restart")
    again.on_new_request(reader)
    assert _load(again, reader, 0) is None
    again.on_request_finished(reader)


def test_metrics_reach_vllm(tmp_path: Path, open_manager: Callable[..., Any]) -> None:
    manager, tier = open_manager(tmp_path)
    _fill_and_evict(manager, tier)
    spec_cls_definitions = TieringOffloadingSpec.build_metric_definitions(
        {
            "secondary_tiers": [
                nvme_secondary_tier_config(load_settings({"ATOM_TIER_NVME_PATH": str(tmp_path)}))
            ]
        }
    )
    assert METRIC_PREFIX + "corrupt_dropped" in spec_cls_definitions
    stats = manager.get_stats()
    assert stats is not None
    reduced = stats.reduce()
    assert reduced[METRIC_PREFIX + "writes"] == 12
    assert reduced[METRIC_PREFIX + "capacity_bytes"] == BYTES_PER_GB
    used, capacity = tier.tier_usage()
    assert used == 12 * (CHUNK_BYTES + HEADER_BLOCK) and capacity == BYTES_PER_GB
    # Counters are reported as increments: nothing new, nothing reported.
    again = tier.get_stats()
    assert again is None or METRIC_PREFIX + "writes" not in again.reduce()


def test_config_entry() -> None:
    assert nvme_secondary_tier_config(load_settings({})) is None
    off = load_settings({"ATOM_TIER_NVME_PATH": "/mnt/nvme", "ATOM_TIER_NVME_GB": "0"})
    assert nvme_secondary_tier_config(off) is None
    auto = nvme_secondary_tier_config(load_settings({"LMCACHE_LOCAL_DISK": "file:///mnt/x/"}))
    assert auto == {
        "type": "AtomTierNvmeTier",
        "module_path": "atom_tier.tiers.vllm_tier",
        "root_dir": "/mnt/x",
        "capacity_bytes": None,
        "model_identity": None,
    }
    sized = nvme_secondary_tier_config(
        load_settings({"ATOM_TIER_NVME_PATH": "/mnt/nvme", "ATOM_TIER_NVME_GB": "1.5"})
    )
    assert sized is not None and sized["capacity_bytes"] == int(1.5 * 2**30)
