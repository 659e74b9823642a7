"""SharedChunkStore against a real Valkey/Redis server and a real three-node cluster.

No fake server: corruption is made with the server's own commands (SETRANGE, SET, COPY), faults
by stopping the server process, fullness by CONFIG SET maxmemory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from atom_tier.devtools.valkey_cluster import ValkeyCluster
from atom_tier.devtools.valkey_server import ValkeyServer
from atom_tier.tiers.chunk_format import HEADER_BLOCK
from atom_tier.tiers.shared_client import server_warnings
from atom_tier.tiers.shared_store import LOOKUP_WINDOW, SharedChunkStore
from atom_tier.tiers.shared_url import parse_shared_url
from atom_tier.tiers.shared_value import Signer

CHUNK = 64 * 1024


def _chunks(count: int, seed: int = 0) -> list[tuple[bytes, memoryview]]:
    return [
        (seed.to_bytes(2, "big") + i.to_bytes(4, "big"), memoryview(bytearray(os.urandom(CHUNK))))
        for i in range(count)
    ]


def _read(store: SharedChunkStore, keys: list[bytes]) -> tuple[list[bool], list[bytearray]]:
    outs = [bytearray(CHUNK) for _ in keys]
    results = store.submit_reads(
        [(k, memoryview(o)) for k, o in zip(keys, outs, strict=True)]
    ).result(10)
    return results, outs


@pytest.fixture
def make_store(fresh_valkey: ValkeyServer) -> Iterator[Any]:
    stores: list[SharedChunkStore] = []

    def make(
        url: str | None = None, namespace: bytes = b"ns1", signer: Signer | None = None
    ) -> SharedChunkStore:
        store = SharedChunkStore(
            parse_shared_url(url or fresh_valkey.url), namespace, signer=signer, timeout_s=0.5
        )
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_round_trip_and_lookup_stops_at_the_first_hole(make_store: Any) -> None:
    store = make_store()
    assert store.wait_ready(5)
    chunks = _chunks(5)
    report = store.submit_writes(chunks[:3]).result(10)
    assert report.ok and report.written == 3
    keys = [k for k, _ in chunks]
    assert store.exists_prefix(keys) == [True, True, True, False, False]
    # A chain whose second key is missing: everything after the hole counts as missing.
    assert store.exists_prefix([keys[0], keys[4], keys[1]]) == [True, False, False]
    results, outs = _read(store, keys[:3])
    assert results == [True] * 3
    assert all(o == p for o, (_, p) in zip(outs, chunks[:3], strict=True))


def test_long_chains_are_checked_in_windows(make_store: Any) -> None:
    store = make_store()
    chunks = [(i.to_bytes(4, "big"), memoryview(bytearray(64))) for i in range(LOOKUP_WINDOW + 5)]
    assert store.submit_writes(chunks).result(10).ok
    assert all(store.exists_prefix([k for k, _ in chunks]))
    assert store.stats()["lookup_batches"] == 2


def test_a_store_sends_no_payload_for_a_key_the_server_holds(
    make_store: Any, fresh_valkey: ValkeyServer
) -> None:
    store = make_store()
    chunks = _chunks(2)
    store.submit_writes(chunks).result(10)
    fresh_valkey.command("CONFIG", "RESETSTAT")
    again = store.submit_writes(chunks).result(10)
    assert again.present == 2 and again.written == 0 and again.ok
    stats = fresh_valkey.command("INFO", "commandstats")
    assert isinstance(stats, bytes) and b"cmdstat_exists" in stats
    assert b"cmdstat_set:" not in stats


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign_key", "garbage"])
def test_damaged_values_are_misses_deleted_and_counted(
    make_store: Any, fresh_valkey: ValkeyServer, damage: str
) -> None:
    store = make_store()
    (key, payload), (other, _) = _chunks(2)
    store.submit_writes([(key, payload), (other, _chunks(1, 9)[0][1])]).result(10)
    name = store.redis_key(key)
    if damage == "flip":
        fresh_valkey.command("SETRANGE", name, HEADER_BLOCK + 100, b"\xff\xfe")
    elif damage == "truncate":
        value = fresh_valkey.command("GET", name)
        assert isinstance(value, bytes)
        fresh_valkey.command("SET", name, value[: HEADER_BLOCK + 10])
    elif damage == "foreign_key":  # another chunk's (valid) value under this key
        fresh_valkey.command("COPY", store.redis_key(other), name, "REPLACE")
    else:
        fresh_valkey.command("SET", name, b"not a chunk")
    results, outs = _read(store, [key])
    assert results == [False]
    if damage in ("truncate", "garbage"):  # another length: read into scratch, not the buffer
        assert outs[0] == bytearray(CHUNK)
    # A value of the expected size is read into the buffer and verified there, so "flip" and
    # "foreign_key" may have written it: a chunk not reported loaded has a buffer of no
    # meaning (StoreTier._load_done never reports it loaded, and vLLM's tiering manager
    # completes the write of a failed key with success=False).
    assert fresh_valkey.command("EXISTS", name) == 0  # deleted: the next lookup misses
    stats = store.stats()
    assert stats["corrupt_dropped"] == 1 and stats["read_failures"] == 1
    assert store.exists_prefix([key]) == [False]


def test_namespaces_and_signing_keys_never_mix(make_store: Any, fresh_valkey: ValkeyServer) -> None:
    plain = make_store()
    other_model = make_store(namespace=b"ns2")
    signed = make_store(namespace=b"ns1-k1", signer=Signer.from_secret("s1"))
    ((key, payload),) = _chunks(1)
    plain.submit_writes([(key, payload)]).result(10)
    assert other_model.exists_prefix([key]) == [False]
    assert signed.exists_prefix([key]) == [False]
    # A writer without the secret puts a well-formed, unsigned value under the signed key.
    fresh_valkey.command("COPY", plain.redis_key(key), signed.redis_key(key))
    assert signed.exists_prefix([key]) == [True]
    results, _ = _read(signed, [key])
    assert results == [False] and signed.stats()["unsigned_dropped"] == 1
    # A value signed with another secret is refused the same way.
    wrong = make_store(namespace=b"ns1-k1", signer=Signer.from_secret("s2"))
    wrong.submit_writes([(key, payload)]).result(10)
    results, _ = _read(signed, [key])
    assert results == [False] and signed.stats()["unsigned_dropped"] == 2
    signed.submit_writes([(key, payload)]).result(10)
    results, outs = _read(signed, [key])
    assert results == [True] and outs[0] == payload


def test_a_dead_server_costs_one_timeout_then_the_breaker_skips_it(
    make_store: Any, fresh_valkey: ValkeyServer
) -> None:
    store = make_store()
    chunks = _chunks(3)
    store.submit_writes(chunks[:1]).result(10)
    keys = [k for k, _ in chunks]
    fresh_valkey.kill()
    started = time.monotonic()
    assert store.exists_prefix(keys) == [False] * 3  # the failed call opens the breaker
    assert store.exists_prefix(keys) == [False] * 3  # refused at once, no network
    assert store.submit_writes(chunks[1:]).result(10).skipped == 2
    assert _read(store, keys[:1])[0] == [False]
    assert time.monotonic() - started < 5
    stats = store.stats()
    assert stats["breaker_open"] == 1 and stats["breaker_opened"] == 1
    assert stats["lookups_skipped"] >= 3 and stats["stores_skipped"] == 2
    fresh_valkey.start()  # comes back empty
    deadline = time.monotonic() + 20
    while store.stats()["breaker_open"] and time.monotonic() < deadline:
        store.exists_prefix(keys)
        time.sleep(0.2)
    assert store.stats()["breaker_open"] == 0
    assert store.submit_writes(chunks).result(10).written == 3
    assert store.exists_prefix(keys) == [True] * 3


def test_a_full_noeviction_server_rejects_stores_and_keeps_serving(
    make_store: Any, fresh_valkey: ValkeyServer
) -> None:
    store = make_store()
    first = _chunks(2)
    store.submit_writes(first).result(10)
    info = fresh_valkey.command("INFO", "memory")
    assert isinstance(info, bytes)
    used = int(info.decode().split("used_memory:")[1].split()[0])
    fresh_valkey.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    fresh_valkey.command("CONFIG", "SET", "maxmemory", str(used + CHUNK // 2))
    report = store.submit_writes(_chunks(4, seed=1)).result(10)
    assert report.rejected >= 1 and report.failed == 0
    assert store.stats()["stores_rejected_full"] == report.rejected
    assert store.stats()["breaker_open"] == 0  # a full server is not a dead one
    assert _read(store, [k for k, _ in first])[0] == [True, True]


def test_values_evicted_by_the_server_are_plain_misses(
    make_store: Any, fresh_valkey: ValkeyServer
) -> None:
    store = make_store()
    chunks = _chunks(2)
    store.submit_writes(chunks).result(10)
    fresh_valkey.command("DEL", store.redis_key(chunks[0][0]))  # between lookup and load
    results, _ = _read(store, [k for k, _ in chunks])
    assert results == [False, True]
    assert store.stats()["vanished"] == 1 and store.stats()["corrupt_dropped"] == 0


def test_wrong_password_is_one_clear_error_without_the_password(
    make_store: Any, fresh_valkey: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = fresh_valkey.url.replace(f":{fresh_valkey.password}@", ":not-the-password-42@")
    with caplog.at_level(logging.INFO, logger="vllm.atom_tier"):
        store = make_store(url)
        assert not store.wait_ready(5)
        assert store.exists_prefix([b"k"]) == [False]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "ATOM_TIER_SHARED_URL" in errors[0]
    assert all("not-the-password-42" not in r.getMessage() for r in caplog.records)
    assert store.stats()["auth_errors"] == 1


def test_server_warnings_name_the_fix(make_store: Any, fresh_valkey: ValkeyServer) -> None:
    fresh_valkey.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    fresh_valkey.command("CONFIG", "SET", "maxmemory", "0")
    store = make_store()
    assert store.wait_ready(5) and store.facts is not None
    warnings = server_warnings(store.facts)
    assert any("allkeys-lru" in w for w in warnings) and any("maxmemory" in w for w in warnings)
    fresh_valkey.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    fresh_valkey.command("CONFIG", "SET", "maxmemory", "100mb")
    capped = make_store()
    assert capped.wait_ready(5) and capped.facts is not None
    assert server_warnings(capped.facts) == []


def test_unix_socket_and_tls_urls_work(fresh_valkey: ValkeyServer) -> None:
    tls = f"{fresh_valkey.tls_url}?ssl_ca_certs={fresh_valkey.ca_path}"
    for url in (fresh_valkey.unix_url, tls):
        store = SharedChunkStore(parse_shared_url(url), b"ns1", timeout_s=2)
        try:
            chunks = _chunks(2, seed=7)
            assert store.submit_writes(chunks).result(10).written == 2
            assert _read(store, [k for k, _ in chunks])[0] == [True, True]
        finally:
            store.close()
        fresh_valkey.command("FLUSHALL")


def test_cluster_round_trip_and_a_node_down(fresh_valkey_cluster: ValkeyCluster) -> None:
    seeds = ",".join(fresh_valkey_cluster.node_urls)
    store = SharedChunkStore(parse_shared_url(seeds), b"ns1", timeout_s=0.5)
    try:
        assert store.wait_ready(10) and store.facts is not None and store.facts.nodes == 3
        chunks = _chunks(30)
        keys = [k for k, _ in chunks]
        assert store.submit_writes(chunks).result(20).written == 30
        assert store.exists_prefix(keys) == [True] * 30
        results, outs = _read(store, keys)
        assert results == [True] * 30 and outs[5] == chunks[5][1]
        fresh_valkey_cluster.kill_node(1)
        started = time.monotonic()
        found = store.exists_prefix(keys)
        results, _ = _read(store, keys)
        assert time.monotonic() - started < 15  # degrades, never hangs
        assert not all(found) and not all(results)
    finally:
        store.close()
