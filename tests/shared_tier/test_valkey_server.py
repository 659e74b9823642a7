"""The shared tier's test servers are real: they start, answer, enforce their credentials and
memory settings, and stop and come back; the cluster has three masters covering every slot."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from atom_tier.devtools.valkey_cluster import CLUSTER_SLOTS, ValkeyCluster, cluster_info
from atom_tier.devtools.valkey_server import (
    AclUser,
    Reply,
    ReplyError,
    ValkeyServer,
    ValkeyStartError,
    command,
    find_server_binary,
)

MIB = 2**20


def test_server_answers_ping_and_enforces_its_password(fresh_valkey: ValkeyServer) -> None:
    with pytest.raises(ReplyError, match="NOAUTH"):
        command(fresh_valkey.port, "PING")
    with pytest.raises(ReplyError, match=r"WRONGPASS|invalid password"):
        command(fresh_valkey.port, "PING", password="not-" + str(fresh_valkey.password))
    assert command(fresh_valkey.port, "PING", password=fresh_valkey.password) == "PONG"
    client = redis.Redis.from_url(fresh_valkey.url)
    assert client.ping() is True
    client.set("k", b"v")
    assert client.get("k") == b"v"
    anonymous = fresh_valkey.url.replace(f":{fresh_valkey.password}@", "")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(anonymous).get("k")


def test_unix_socket_and_tls_serve_the_same_data(fresh_valkey: ValkeyServer) -> None:
    redis.Redis.from_url(fresh_valkey.url).set("shared", b"one")
    assert redis.Redis.from_url(fresh_valkey.unix_url).get("shared") == b"one"
    tls = redis.Redis.from_url(fresh_valkey.tls_url, ssl_ca_certs=str(fresh_valkey.ca_path))
    assert tls.get("shared") == b"one"
    # Really TLS: the server's certificate fails verification against the system CAs.
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
        redis.Redis.from_url(fresh_valkey.tls_url).ping()
    plain_to_tls = redis.Redis(
        port=fresh_valkey.tls_port, password=fresh_valkey.password, socket_timeout=2
    )
    with pytest.raises(redis.ConnectionError):
        plain_to_tls.ping()


def test_acl_user_is_required_when_set(tmp_path: Path) -> None:
    with ValkeyServer(tmp_path, acl_user=AclUser("tier", "s3cret pass")) as server:
        assert "tier:s3cret%20pass@" in server.url
        assert redis.Redis.from_url(server.url).acl_whoami() == "tier"
        with pytest.raises(ReplyError, match="NOAUTH"):
            command(server.port, "PING")  # the default user is off
        with pytest.raises(ReplyError, match="WRONGPASS"):
            command(server.port, "PING", username="tier", password="wrong")


def test_maxmemory_and_policy_are_enforced(tmp_path: Path) -> None:
    value = b"x" * (256 * 1024)
    with ValkeyServer(tmp_path / "lru", maxmemory=4 * MIB, maxmemory_policy="allkeys-lru") as lru:
        client = redis.Redis.from_url(lru.url)
        assert client.config_get("maxmemory")["maxmemory"] == str(4 * MIB)
        for index in range(64):  # 16 MiB into a 4 MiB cap
            client.set(f"chunk:{index}", value)
        assert 0 < client.dbsize() < 64
        assert client.info("stats")["evicted_keys"] > 0
    with ValkeyServer(tmp_path / "full", maxmemory=4 * MIB, maxmemory_policy="noeviction") as full:
        client = redis.Redis.from_url(full.url)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for index in range(64):
                client.set(f"chunk:{index}", value)


def test_stop_and_start_bring_the_same_address_back_empty(fresh_valkey: ValkeyServer) -> None:
    client = redis.Redis.from_url(fresh_valkey.url, socket_timeout=2)
    client.set("before", b"1")
    assert fresh_valkey.stop() == 0
    assert not fresh_valkey.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    fresh_valkey.start()
    assert client.ping() is True  # the client reconnects to the same URL
    assert client.get("before") is None  # no persistence: it restarts empty


def test_kill_is_a_crash_and_restart_recovers(fresh_valkey: ValkeyServer) -> None:
    assert fresh_valkey.kill() == -signal.SIGKILL
    with pytest.raises(ConnectionRefusedError):
        command(fresh_valkey.port, "PING")
    fresh_valkey.restart()
    assert fresh_valkey.ping()


def test_start_failure_names_the_server_and_shows_its_log(tmp_path: Path) -> None:
    server = ValkeyServer(tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(ValkeyStartError, match=r"exited with 1(.|\n)*no-such-directive"):
        server.start()
    assert not server.running
    with pytest.raises(FileNotFoundError, match="/nonexistent/valkey-server"):
        find_server_binary(Path("/nonexistent/valkey-server"))


def test_cluster_has_three_masters_covering_every_slot(fresh_valkey_cluster: ValkeyCluster) -> None:
    for node in fresh_valkey_cluster.nodes:
        info = cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_size"] == "3"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_slots_assigned"] == str(CLUSTER_SLOTS)
    reply = command(fresh_valkey_cluster.nodes[0].port, "CLUSTER", "NODES")
    assert isinstance(reply, bytes)
    masters = [line for line in reply.decode().splitlines() if "master" in line.split()[2]]
    assert len(masters) == 3
    client = redis.cluster.RedisCluster.from_url(fresh_valkey_cluster.url)
    for index in range(30):
        client.set(f"spread:{index}", index)
    assert all(command(n.port, "DBSIZE") > 0 for n in fresh_valkey_cluster.nodes)  # type: ignore[operator]
    assert client.get("spread:7") == b"7"


def _key_on(cluster: ValkeyCluster, index: int) -> str:
    """A key whose slot belongs to node `index` (slots are split in order)."""
    for number in range(10_000):
        key = f"key:{number}"
        slot = command(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", key)
        assert isinstance(slot, int)
        if slot * len(cluster.nodes) // CLUSTER_SLOTS == index:
            return key
    raise AssertionError("no key found")


def _flags_seen_by(node: ValkeyServer, node_id: Reply) -> list[str]:
    reply = node.command("CLUSTER", "NODES")
    assert isinstance(reply, bytes) and isinstance(node_id, bytes)
    for line in reply.decode().splitlines():
        if line.startswith(node_id.decode()):
            return line.split()[2].split(",")
    raise AssertionError(f"{node_id!r} not in CLUSTER NODES")


def test_cluster_node_down_then_back(fresh_valkey_cluster: ValkeyCluster) -> None:
    cluster = fresh_valkey_cluster
    down_key, up_key = _key_on(cluster, 1), _key_on(cluster, 0)
    node_id = command(cluster.nodes[1].port, "CLUSTER", "MYID")
    command(cluster.nodes[0].port, "SET", up_key, "alive")
    cluster.stop_node(1)
    with pytest.raises(ConnectionRefusedError):
        command(cluster.nodes[1].port, "PING")
    deadline = time.monotonic() + 15  # node timeout is 2 s; the others then mark it failed
    while "fail" not in _flags_seen_by(cluster.nodes[0], node_id):  # "fail?" is only suspected
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Once it is marked failed, the others still serve their own slots (no full coverage
    # required) and still redirect the dead node's slots to it.
    assert command(cluster.nodes[0].port, "GET", up_key) == b"alive"
    with pytest.raises(ReplyError, match="MOVED"):
        command(cluster.nodes[0].port, "GET", down_key)
    cluster.start_node(1)
    assert command(cluster.nodes[1].port, "CLUSTER", "MYID") == node_id
    assert command(cluster.nodes[1].port, "SET", down_key, "back") == "OK"
    assert cluster_info(cluster.nodes[0])["cluster_state"] == "ok"
