"""Real Valkey/Redis servers for the tests (atom_tier/devtools/valkey_server.py), imported by
tests/conftest.py so every test module can use them.

`valkey_server` is one password-protected server for the session, with a unix socket and a TLS
port too (`.url`, `.unix_url`, `.tls_url` + `.ca_path`); `fresh_valkey` hands it to a test
running, empty and with its start-up memory settings, so a test may stop it, kill it or
CONFIG SET it. `valkey_cluster` is a three-master cluster for the session; `fresh_valkey_cluster`
restarts any node a previous test stopped and empties every node.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from atom_tier.devtools.valkey_cluster import ValkeyCluster
from atom_tier.devtools.valkey_server import ValkeyServer

MEMORY_SETTINGS = ("maxmemory", "maxmemory-policy")


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer(
        tmp_path_factory.mktemp("valkey"),
        password=secrets.token_hex(12),
        unix_socket=True,
        tls=True,
    )
    with server:
        yield server


@pytest.fixture
def fresh_valkey(valkey_server: ValkeyServer) -> Iterator[ValkeyServer]:
    valkey_server.start()  # no-op when running; brings it back after a test that stopped it
    initial = {name: valkey_server.command("CONFIG", "GET", name) for name in MEMORY_SETTINGS}
    valkey_server.command("FLUSHALL")
    yield valkey_server
    valkey_server.start()
    for name, reply in initial.items():
        assert isinstance(reply, list)
        valkey_server.command("CONFIG", "SET", name, reply[1])


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    with ValkeyCluster(tmp_path_factory.mktemp("valkey-cluster")) as cluster:
        yield cluster


@pytest.fixture
def fresh_valkey_cluster(valkey_cluster: ValkeyCluster) -> Iterator[ValkeyCluster]:
    for index, node in enumerate(valkey_cluster.nodes):
        if not node.running:
            valkey_cluster.start_node(index)
        node.command("FLUSHALL")
    yield valkey_cluster
    for index, node in enumerate(valkey_cluster.nodes):
        if not node.running:
            valkey_cluster.start_node(index)
