"""The lean RESP data path (atom_tier/tiers/resp_wire.py) against a real Valkey/Redis server.

No fake server: values are checked with the fixture's own client (a separate RESP reader in
devtools), faults are made by killing or stopping (SIGSTOP) the server process, fullness by
CONFIG SET maxmemory, a wrong-type key by LPUSH.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from atom_tier.devtools.valkey_server import ValkeyServer
from atom_tier.tiers.resp_wire import Endpoint, ReplyError, WirePool
from atom_tier.tiers.shared_client import (
    ServerFull,
    SharedClient,
    SharedUnavailable,
    lean_endpoint,
)
from atom_tier.tiers.shared_url import SharedTarget, parse_shared_url

HEADER = 4096
MAC = 32


def _pool(url: str, timeout_s: float = 2.0) -> WirePool:
    endpoint = lean_endpoint(parse_shared_url(url))
    assert endpoint is not None
    return WirePool(endpoint, timeout_s)


def _value(payload_bytes: int, seed: int = 0) -> tuple[bytes, memoryview, bytes]:
    """(header-sized part, payload, MAC-sized part) with recognisable bytes in each."""
    header = bytes([seed % 251]) * HEADER
    payload = memoryview(bytearray(os.urandom(payload_bytes)))
    return header, payload, bytes([(seed + 1) % 251]) * MAC


def _buffers(payload_bytes: int) -> list[memoryview]:
    return [memoryview(bytearray(n)) for n in (HEADER, payload_bytes, MAC)]


@pytest.fixture
def pool(fresh_valkey: ValkeyServer) -> Iterator[WirePool]:
    wire = _pool(fresh_valkey.url)
    yield wire
    wire.close()


def test_only_plain_standalone_targets_take_the_lean_path(fresh_valkey: ValkeyServer) -> None:
    assert lean_endpoint(parse_shared_url(fresh_valkey.url)) is not None
    unix = lean_endpoint(parse_shared_url(fresh_valkey.unix_url))
    assert unix is not None and unix.path == str(fresh_valkey.unix_socket_path)
    assert unix.password == fresh_valkey.password
    assert lean_endpoint(parse_shared_url("redis://u:p%40ss@example:7000/3")) == Endpoint(
        host="example", port=7000, username="u", password="p@ss", db=3
    )
    assert lean_endpoint(parse_shared_url(fresh_valkey.tls_url)) is None
    assert lean_endpoint(parse_shared_url("redis://h:1/0?protocol=3")) is None
    assert lean_endpoint(SharedTarget(True, ("redis://127.0.0.1:7000",))) is None
    for url, lean in ((fresh_valkey.url, True), (fresh_valkey.tls_url, False)):
        client = SharedClient(parse_shared_url(url), 1.0)
        assert client.lean is lean
        client.close()


@pytest.mark.parametrize("payload_bytes", [0, 1, 256 * 1024, 16 * 1024 * 1024 + 5])
@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_values_go_out_from_parts_and_come_back_into_buffers(
    fresh_valkey: ValkeyServer, payload_bytes: int, over: str
) -> None:
    wire = _pool(fresh_valkey.url if over == "tcp" else fresh_valkey.unix_url, timeout_s=10)
    try:
        parts = _value(payload_bytes, seed=3)
        assert wire.set_absent([(b"v", parts)]) == [True]
        assert wire.set_absent([(b"v", _value(payload_bytes, seed=4))]) == [False]  # NX
        stored = fresh_valkey.command("GET", "v", timeout=30)
        assert stored == parts[0] + bytes(parts[1]) + parts[2]
        buffers = _buffers(payload_bytes)
        assert wire.get_into([(b"v", buffers)]) == [True]
        assert [bytes(b) for b in buffers] == [parts[0], bytes(parts[1]), parts[2]]
    finally:
        wire.close()


def test_other_lengths_nil_and_error_replies_in_place(
    pool: WirePool, fresh_valkey: ValkeyServer
) -> None:
    size = 64 * 1024
    assert pool.set_absent([(b"good", _value(size, seed=1))]) == [True]
    fresh_valkey.command("SET", "short", b"x" * 5000)
    fresh_valkey.command("SET", "long", b"y" * (HEADER + size + MAC + 1))
    fresh_valkey.command("LPUSH", "list", b"a")
    keys = [b"short", b"missing", b"list", b"long", b"good"]
    buffers = [_buffers(size) for _ in keys]
    replies = pool.get_into(list(zip(keys, buffers, strict=True)))
    assert replies[0] == b"x" * 5000 and replies[3] == b"y" * (HEADER + size + MAC + 1)
    assert replies[1] is None
    assert isinstance(replies[2], ReplyError) and replies[2].code == "WRONGTYPE"
    assert replies[4] is True and bytes(buffers[4][0]) == bytes([1]) * HEADER
    for untouched in (buffers[0], buffers[1], buffers[2], buffers[3]):
        assert all(not any(b) for b in untouched)  # read into scratch, not the buffers
    # The connection is still in step: the next call reads its own replies.
    assert pool.exists([b"good", b"missing", b"list"]) == [True, False, True]


def test_oom_is_server_full_and_the_client_keeps_going(fresh_valkey: ValkeyServer) -> None:
    client = SharedClient(parse_shared_url(fresh_valkey.url), 2.0)
    try:
        assert client.set_absent([("before", _value(10))]) == [True]
        fresh_valkey.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        fresh_valkey.command("CONFIG", "SET", "maxmemory", "1")
        replies = client.set_absent([("a", _value(1000)), ("b", _value(1000))])
        assert all(isinstance(r, ServerFull) for r in replies), replies
        buffers = _buffers(10)
        assert client.get_into([("before", buffers)]) == [True]  # reads still served
    finally:
        client.close()


def test_wrong_type_reply_stays_in_place_through_the_client(fresh_valkey: ValkeyServer) -> None:
    fresh_valkey.command("LPUSH", "list", b"a")
    client = SharedClient(parse_shared_url(fresh_valkey.url), 2.0)
    try:
        replies = client.get_into([("list", _buffers(1)), ("nothing", _buffers(1))])
        assert isinstance(replies[0], ReplyError) and "WRONGTYPE" in str(replies[0])
        assert replies[1] is None
    finally:
        client.close()


@pytest.mark.parametrize("credentials", ["wrong", "none"])
def test_refused_credentials_are_an_auth_failure(
    fresh_valkey: ValkeyServer, credentials: str
) -> None:
    good = f":{fresh_valkey.password}@"
    url = fresh_valkey.url.replace(good, ":wrong-pass-17@" if credentials == "wrong" else "")
    client = SharedClient(parse_shared_url(url), 2.0)
    try:
        for call in (
            lambda: client.set_absent([("k", _value(1))]),
            lambda: client.get_into([("k", _buffers(1))]),
            lambda: client.exists(["k"]),
        ):
            with pytest.raises(SharedUnavailable) as error:
                call()
            assert error.value.auth and "wrong-pass-17" not in str(error.value)
    finally:
        client.close()


def test_select_uses_the_urls_database(fresh_valkey: ValkeyServer) -> None:
    wire = _pool(fresh_valkey.url.replace("/0", "/5"))
    try:
        assert wire.set_absent([(b"in-db-5", _value(1))]) == [True]
        assert fresh_valkey.command("EXISTS", "in-db-5") == 0  # not in db 0
        checker = redis.Redis.from_url(fresh_valkey.url.replace("/0", "/5"))
        assert checker.exists("in-db-5") == 1
        checker.close()
    finally:
        wire.close()


@pytest.mark.timeout(120)
def test_a_server_killed_mid_reply_fails_the_call_and_the_pool_recovers(
    fresh_valkey: ValkeyServer,
) -> None:
    size, count = 16 * 1024 * 1024, 8
    wire = _pool(fresh_valkey.url, timeout_s=5)
    client = SharedClient(parse_shared_url(fresh_valkey.url), 5.0)
    try:
        header, payload, mac = _value(size)
        payload[-1] = 0xFF
        for i in range(count):
            assert wire.set_absent([(b"big%d" % i, (header, payload, mac))]) == [True]
        buffers = [_buffers(size) for _ in range(count)]
        outcome: list[BaseException | list[object]] = []

        def read() -> None:
            try:
                outcome.append(
                    list(wire.get_into([(b"big%d" % i, buffers[i]) for i in range(count)]))
                )
            except BaseException as error:
                outcome.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        while not outcome and buffers[0][1][-1] != 0xFF:  # the first value has arrived
            time.sleep(0.001)
        fresh_valkey.kill()
        reader.join(60)
        assert not reader.is_alive()  # no hang
        assert isinstance(outcome[0], ConnectionError | OSError), outcome[0]
        assert wire.idle == 0  # the broken connection was closed, not given back
        with pytest.raises(SharedUnavailable):  # refused while it is down
            client.set_absent([("k", _value(1))])
        fresh_valkey.start()  # comes back empty
        assert client.set_absent([("k", _value(1))]) == [True]
        assert client.exists(["k", "big0"]) == [True, False]
    finally:
        wire.close()
        client.close()


@pytest.mark.timeout(60)
def test_a_timed_out_connection_is_never_reused(fresh_valkey: ValkeyServer) -> None:
    wire = _pool(fresh_valkey.url, timeout_s=0.3)
    client = SharedClient(parse_shared_url(fresh_valkey.url), 0.3)
    assert fresh_valkey.process is not None
    group = fresh_valkey.process.pid
    try:
        assert wire.set_absent([(b"a", _value(100, seed=1))]) == [True]
        os.killpg(group, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                wire.get_into([(b"a", _buffers(100))])
            assert wire.idle == 0  # closed mid-reply, not given back
            with pytest.raises(SharedUnavailable) as error:
                client.get_into([("a", _buffers(100))])
            assert "TimeoutError" in str(error.value) and not error.value.auth
        finally:
            os.killpg(group, signal.SIGCONT)
        # The late GET replies arrive on the old connections; the next calls get their own.
        assert client.set_absent([("b", _value(100, seed=2))]) == [True]
        buffers = _buffers(100)
        assert client.get_into([("b", buffers)]) == [True]
        assert bytes(buffers[0]) == bytes([2]) * HEADER
    finally:
        wire.close()
        client.close()


def test_idle_connections_to_a_restarted_server_are_replaced(fresh_valkey: ValkeyServer) -> None:
    client = SharedClient(parse_shared_url(fresh_valkey.url), 2.0)
    try:
        barrier = threading.Barrier(4)

        def store(index: int) -> None:  # four threads: four pooled connections
            barrier.wait()
            client.set_absent([(f"k{index}", _value(1000))])

        threads = [threading.Thread(target=store, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        fresh_valkey.kill()
        fresh_valkey.start()
        assert client.set_absent([("after", _value(1))]) == [True]  # no stale socket used
    finally:
        client.close()


def test_many_pipelined_commands(pool: WirePool) -> None:
    count = 3000
    keys = [b"key:%d" % i for i in range(count)]
    values = [_value(i % 50, seed=i) for i in range(count)]
    assert pool.set_absent(list(zip(keys, values, strict=True))) == [True] * count
    assert pool.exists([*keys, b"absent"]) == [True] * count + [False]
    buffers = [_buffers(i % 50) for i in range(count)]
    assert pool.get_into(list(zip(keys, buffers, strict=True))) == [True] * count
    for (header, payload, mac), got in zip(values, buffers, strict=True):
        assert [bytes(b) for b in got] == [header, bytes(payload), mac]


def test_threads_share_one_client(fresh_valkey: ValkeyServer) -> None:
    client = SharedClient(parse_shared_url(fresh_valkey.url), 5.0, max_connections=3)
    failures: list[str] = []

    def work(thread: int) -> None:
        for round_ in range(20):
            name = f"t{thread}:{round_}"
            parts = _value(20_000 + thread, seed=thread + round_)
            if client.set_absent([(name, parts)]) != [True]:
                failures.append(f"{name}: not stored")
            buffers = _buffers(20_000 + thread)
            if client.get_into([(name, buffers)]) != [True] or [bytes(b) for b in buffers] != [
                parts[0],
                bytes(parts[1]),
                parts[2],
            ]:
                failures.append(f"{name}: read back wrong")

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
    finally:
        client.close()
