"""The shared tier inside vLLM 0.32's own TieringOffloadingSpec and TieringOffloadingManager,
against a real Valkey/Redis server.

No vLLM server: two managers ("replicas") are built from real OffloadingConfigs with the tier
entry ``shared_secondary_tier_config`` produces; the test plays the GPU worker's part (filling
DRAM-tier slots) while vLLM's manager runs lookups (RETRY until the async check answers),
cascades and promotions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from vllm.v1.kv_offload.base import (
    Locality,
    LookupResult,
    Medium,
    ReqContext,
    ScheduleEndContext,
    make_offload_key,
)
from vllm.v1.kv_offload.cpu.common import CPULoadStoreSpec
from vllm.v1.kv_offload.tiering.manager import TieringOffloadingManager
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

from atom_tier.devtools.valkey_server import ValkeyServer
from atom_tier.settings import load_settings
from atom_tier.tiers import shared_secondary_tier_config
from atom_tier.tiers.shared_tier import AtomTierSharedTier
from tests.conftest import make_offloading_config
from tests.tiers.conftest import payload_for

DRAM_CHUNKS = 4
CHUNK_BYTES = 64 * 1024
END_OF_STEP = ScheduleEndContext(new_req_ids=(), preempted_req_ids=())
Opener = Callable[..., tuple[TieringOffloadingManager, AtomTierSharedTier]]


@pytest.fixture
def open_manager(fresh_valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Opener]:
    # The tier reads its URL from the settings (never from the entry vLLM logs).
    monkeypatch.setenv("ATOM_TIER_SHARED_URL", fresh_valkey.url)
    managers: list[TieringOffloadingManager] = []

    def factory(weights: str = "w1", events: bool = True) -> tuple[Any, AtomTierSharedTier]:
        identity = {"model": "m", "numerics": "n", "weights_id": weights}
        entry = shared_secondary_tier_config(load_settings(), identity)
        assert entry is not None and "url" not in str(entry)
        config = make_offloading_config(
            worker_kv_bytes_per_block=CHUNK_BYTES,
            extra_config={
                "cpu_bytes_to_use": DRAM_CHUNKS * CHUNK_BYTES,
                "secondary_tiers": [entry],
            },
            engine_id=f"atom-tier-test-{uuid.uuid4().hex[:8]}",
            enable_kv_cache_events=events,
        )
        manager = TieringOffloadingSpec(config).get_manager()
        assert isinstance(manager, TieringOffloadingManager)
        managers.append(manager)
        (tier,) = manager.secondary_tiers
        assert isinstance(tier, AtomTierSharedTier)
        assert tier.store.wait_ready(10)
        return manager, tier

    yield factory
    for manager in managers:
        manager.shutdown()


def _key(i: int) -> Any:
    return make_offload_key(i.to_bytes(32, "big"), 0)


def _rows(manager: TieringOffloadingManager) -> memoryview:
    return manager.primary_tier.get_kv_memoryview().cast("B")


def _store(manager: TieringOffloadingManager, tier: AtomTierSharedTier, ids: range) -> None:
    req = ReqContext(req_id=f"writer-{ids.start}")
    manager.on_new_request(req)
    keys = [_key(i) for i in ids]
    prepared = manager.prepare_store(keys, req)
    assert prepared is not None and isinstance(prepared.store_spec, CPULoadStoreSpec)
    rows = _rows(manager)
    for key, chunk in zip(prepared.keys_to_store, prepared.store_spec.chunk_ids, strict=True):
        start = int(chunk) * CHUNK_BYTES
        rows[start : start + CHUNK_BYTES] = payload_for(key, CHUNK_BYTES)
    manager.complete_store(prepared.keys_to_store, req)
    deadline = time.monotonic() + 30
    while tier.has_pending_work():
        assert time.monotonic() < deadline
        manager.on_schedule_end(END_OF_STEP)
        time.sleep(0.005)
    manager.on_request_finished(req)


def _reader_after_store(
    open_manager: Opener, stored: range
) -> tuple[TieringOffloadingManager, AtomTierSharedTier, ReqContext]:
    """Replica 1 stores ``stored``; replica 2 and a new request on it, ready to look up."""
    one, one_tier = open_manager()
    _store(one, one_tier, stored)
    two, two_tier = open_manager()
    reader = ReqContext(req_id="reader")
    two.on_new_request(reader)
    return two, two_tier, reader


def _load(manager: TieringOffloadingManager, req: ReqContext, i: int) -> tuple[list[str], Any]:
    """Lookup results until vLLM's manager settles, and the DRAM bytes on a hit."""
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = manager.lookup(_key(i), req)
        seen.append(result.name)
        if result is LookupResult.HIT:
            spec = manager.prepare_load([_key(i)], req)
            assert isinstance(spec, CPULoadStoreSpec)
            start = int(spec.chunk_ids[0]) * CHUNK_BYTES
            data = bytes(_rows(manager)[start : start + CHUNK_BYTES])
            manager.complete_load([_key(i)], req)
            return seen, data
        if result is LookupResult.MISS:
            return seen, None
        manager.on_schedule_end(END_OF_STEP)  # flushes the tier's async lookups
        time.sleep(0.005)
    raise AssertionError(f"lookup never settled: {seen[-5:]}")


def test_a_chunk_stored_by_one_replica_is_promoted_in_another(open_manager: Opener) -> None:
    one, one_tier = open_manager()
    _store(one, one_tier, range(0, 2))
    events = list(one_tier.take_events())
    assert [e.keys for e in events] == [[_key(0), _key(1)]]
    assert events[0].medium is Medium.STORAGE and events[0].locality is Locality.REMOTE
    assert not events[0].removed
    two, two_tier = open_manager()
    reader = ReqContext(req_id="reader")
    two.on_new_request(reader)
    seen, data = _load(two, reader, 1)
    # The first lookup waits on the network off the scheduler thread: RETRY, never a block.
    assert seen[0] == "RETRY" and data == payload_for(_key(1), CHUNK_BYTES)
    assert _load(two, reader, 7)[1] is None
    two.on_request_finished(reader)
    assert two_tier.stats()["reads"] == 1


def test_a_value_gone_before_its_load_is_a_miss_not_a_retry_loop(
    open_manager: Opener, fresh_valkey: ValkeyServer
) -> None:
    two, two_tier, reader = _reader_after_store(open_manager, range(0, 1))
    assert two.lookup(_key(0), reader) is LookupResult.RETRY
    two.on_schedule_end(END_OF_STEP)
    deadline = time.monotonic() + 10
    while two_tier.stats()["hits"] < 1:  # the background check found it
        assert time.monotonic() < deadline
        time.sleep(0.005)
    fresh_valkey.command("FLUSHALL")  # gone between the lookup and the load
    seen, data = _load(two, reader, 0)
    assert data is None and seen[-1] == "MISS"
    assert two_tier.stats()["vanished"] == 1
    two.on_request_finished(reader)


def test_other_weights_never_see_the_chunks(open_manager: Opener) -> None:
    one, one_tier = open_manager()
    _store(one, one_tier, range(0, 1))
    other, _ = open_manager(weights="w2")
    reader = ReqContext(req_id="reader")
    other.on_new_request(reader)
    assert _load(other, reader, 0)[1] is None
    other.on_request_finished(reader)


def test_no_events_unless_vllms_kv_events_are_on(open_manager: Opener) -> None:
    manager, tier = open_manager(events=False)
    _store(manager, tier, range(0, 2))
    assert list(tier.take_events()) == []


def test_a_first_chunk_the_server_lacks_is_a_miss_in_the_same_step(open_manager: Opener) -> None:
    manager, tier = open_manager()
    reader = ReqContext(req_id="new-prompt")
    manager.on_new_request(reader)
    # Probed on the scheduler thread within the budget: no RETRY, so no deferred step.
    assert manager.lookup(_key(5), reader) is LookupResult.MISS
    assert manager.lookup(_key(5), reader) is LookupResult.MISS  # settled, not asked again
    manager.on_schedule_end(END_OF_STEP)
    stats = tier.stats()
    assert (stats["probes"], stats["probe_misses"], stats["lookups"]) == (1, 1, 0)
    manager.on_request_finished(reader)


def test_only_the_first_chunk_is_probed_and_a_present_one_goes_async(
    open_manager: Opener,
) -> None:
    two, two_tier, reader = _reader_after_store(open_manager, range(0, 2))
    seen, data = _load(two, reader, 0)
    assert seen[0] == "RETRY" and data == payload_for(_key(0), CHUNK_BYTES)
    # The request's next key is not probed: the background lookup answers it.
    seen, data = _load(two, reader, 9)
    assert seen[0] == "RETRY" and data is None
    stats = two_tier.stats()
    assert (stats["probes"], stats["probe_misses"]) == (1, 0)
    two.on_request_finished(reader)


def test_no_probe_with_a_zero_budget(open_manager: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOM_TIER_SHARED_LOOKUP_BUDGET_MS", "0")
    manager, tier = open_manager()
    reader = ReqContext(req_id="reader")
    manager.on_new_request(reader)
    seen, data = _load(manager, reader, 3)
    assert seen[0] == "RETRY" and seen[-1] == "MISS" and data is None
    assert tier.stats()["probes"] == 0
    manager.on_request_finished(reader)


def test_an_unanswered_probe_leaves_the_lookup_to_the_background_and_pauses(
    open_manager: Opener, fresh_valkey: ValkeyServer
) -> None:
    manager, tier = open_manager()
    fresh_valkey.stop()
    for name in ("first", "second"):
        reader = ReqContext(req_id=name)
        manager.on_new_request(reader)
        seen, data = _load(manager, reader, 4)
        assert seen[0] == "RETRY" and seen[-1] == "MISS" and data is None
        manager.on_request_finished(reader)
    stats = tier.stats()
    # The first request's probe found no server; the second was not probed (probing paused,
    # and the background lookup has opened the breaker by then).
    assert (stats["probes"], stats["probes_unanswered"]) == (0, 1)
