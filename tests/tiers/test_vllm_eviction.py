"""ATOM_TIER_EVICTION=sticky inside vLLM 0.32's own offloading manager.

No server: vLLM's TieringOffloadingSpec (the spec atom-tier's extends) is built from a real
OffloadingConfig whose extra config carries the keys atom-tier's connector config writes for
the setting; vLLM's CachePolicyFactory imports the policy out of tree and vLLM's manager runs
lookups, loads, stores and evictions. The test plays the scheduler's part, request by request.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key
from vllm.v1.kv_offload.tiering.manager import TieringOffloadingManager
from vllm.v1.kv_offload.tiering.spec import TieringOffloadingSpec

from atom_tier.connector.config import eviction_entries
from atom_tier.settings import load_settings
from tests.conftest import make_offloading_config

CHUNK_BYTES = 64 * 1024
SESSIONS = ("a", "b", "c")


def _key(name: str) -> bytes:
    return make_offload_key(name.encode().rjust(32, b"\0"), 0)


def _name(key: bytes) -> str:
    return key[:32].lstrip(b"\0").decode()


@pytest.fixture
def managers() -> Iterator[list[TieringOffloadingManager]]:
    built: list[TieringOffloadingManager] = []
    yield built
    for manager in built:
        manager.shutdown()


def _manager(built: list[TieringOffloadingManager], eviction: str) -> TieringOffloadingManager:
    entries = eviction_entries(load_settings({"ATOM_TIER_EVICTION": eviction}).eviction)
    config = make_offloading_config(
        worker_kv_bytes_per_block=CHUNK_BYTES,
        extra_config={"cpu_bytes_to_use": 2 * CHUNK_BYTES, **entries},
        engine_id=f"atom-tier-test-{uuid.uuid4().hex[:8]}",
    )
    manager = TieringOffloadingSpec(config).get_manager()
    assert isinstance(manager, TieringOffloadingManager)
    built.append(manager)
    return manager


def _request(manager: TieringOffloadingManager, names: list[str]) -> tuple[int, list[str]]:
    """One request: load the hits from the head, store the rest, finish; (hits, evicted)."""
    req = ReqContext(req_id=uuid.uuid4().hex)
    manager.on_new_request(req)
    keys = [_key(n) for n in names]
    hits = 0
    while hits < len(keys) and manager.lookup(keys[hits], req) is LookupResult.HIT:
        hits += 1
    if hits:
        manager.prepare_load(keys[:hits], req)
        manager.complete_load(keys[:hits], req)
    evicted: list[str] = []
    if hits < len(keys):
        prepared = manager.prepare_store(keys[hits:], req)
        assert prepared is not None
        evicted = [_name(key) for key in prepared.evicted_keys]
        manager.complete_store(prepared.keys_to_store, req)
    manager.on_request_finished(req)
    return hits, evicted


def test_the_setting_selects_atom_tiers_policy_class() -> None:
    assert eviction_entries(load_settings({"ATOM_TIER_EVICTION": "sticky"}).eviction) == {
        "eviction_policy": "StickyCachePolicy",
        "cache_policy_module_path": "atom_tier.tiers.vllm_eviction",
    }
    assert eviction_entries(load_settings({"ATOM_TIER_EVICTION": "lru"}).eviction) == {
        "eviction_policy": "lru"
    }


def test_vllm_evicts_as_sticky_decides(managers: list[TieringOffloadingManager]) -> None:
    # Three one-chunk sessions take turns in a two-chunk DRAM tier (worked out by hand in
    # tests/tiers/test_eviction.py): sticky keeps a from round 3 on; LRU never hits.
    sticky = _manager(managers, "sticky")
    rounds = [[_request(sticky, [s]) for s in SESSIONS] for _ in range(10)]
    assert [evicted for r in rounds[:3] for _, evicted in r] == [
        [], [], ["a"], ["b"], ["c"], ["b"], [], ["c"], ["b"]
    ]  # fmt: skip
    assert sum(hits for r in rounds for hits, _ in r) == 8

    lru = _manager(managers, "lru")
    lru_rounds = [[_request(lru, [s]) for s in SESSIONS] for _ in range(10)]
    assert sum(hits for r in lru_rounds for hits, _ in r) == 0
    assert [evicted for _, evicted in lru_rounds[1]] == [["b"], ["c"], ["a"]]


def test_a_chunk_being_loaded_is_not_evicted(managers: list[TieringOffloadingManager]) -> None:
    # vLLM pins a chunk while a load reads it (ref_cnt 1): sticky must pass over it.
    manager = _manager(managers, "sticky")
    _request(manager, ["a"])
    _request(manager, ["b"])  # trial, least recent first: a, b
    req = ReqContext(req_id="reader")
    manager.on_new_request(req)
    assert manager.lookup(_key("a"), req) is LookupResult.HIT
    manager.prepare_load([_key("a")], req)  # a is held by the load
    writer = ReqContext(req_id="writer")
    manager.on_new_request(writer)
    prepared = manager.prepare_store([_key("c")], writer)
    assert prepared is not None
    assert [_name(key) for key in prepared.evicted_keys] == ["b"]
    # Both chunks are held now (a by the load, c by its store in flight): nothing to evict.
    assert manager.prepare_store([_key("d")], writer) is None
    manager.complete_store(prepared.keys_to_store, writer)
    manager.complete_load([_key("a")], req)
    prepared = manager.prepare_store([_key("d")], writer)
    assert prepared is not None and len(prepared.evicted_keys) == 1
