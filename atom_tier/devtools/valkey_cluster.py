"""A real Valkey/Redis Cluster on loopback for tests and benchmarks of the shared tier: three
masters by default, slots split evenly with CLUSTER ADDSLOTSRANGE and joined with CLUSTER MEET
over plain RESP (no redis-cli needed), nodes stopped and restarted one at a time for fault tests.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

from atom_tier.devtools.valkey_server import ValkeyServer, ValkeyStartError

CLUSTER_SLOTS = 16384


def cluster_info(server: ValkeyServer) -> dict[str, str]:
    """CLUSTER INFO as a dict (cluster_state, cluster_known_nodes, cluster_size, ...)."""
    reply = server.command("CLUSTER", "INFO")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)


class ValkeyCluster:
    """A Valkey/Redis Cluster of `size` masters (no replicas) on loopback, slots split evenly.

    `cluster-require-full-coverage no`: with a node down, the others keep serving their slots,
    and keys on the dead node's slots fail (CLUSTERDOWN), which is what a cache tier must ride.
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        size: int = 3,
        binary: Path | None = None,
        password: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._own_dir = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="valkey-cluster-")) if work_dir is None else work_dir
        )
        self.startup_timeout = startup_timeout
        self.nodes = [
            ValkeyServer(
                self.work_dir / f"node{index}", binary=binary, password=password, cluster=True
            )
            for index in range(size)
        ]
        if password is not None:
            # Nodes authenticate to each other with masterauth (needed once replicas exist).
            for node in self.nodes:
                node.extra_args += ["--masterauth", password]

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client discovers the others from it."""
        return self.nodes[0].url

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> ValkeyCluster:
        try:
            for node in self.nodes:
                node.start()
            self._assign_slots_and_meet()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_slots_and_meet(self) -> None:
        if int(cluster_info(self.nodes[0]).get("cluster_known_nodes", 0)) == len(self.nodes):
            return  # restarted nodes kept nodes-<port>.conf: already one cluster
        size = len(self.nodes)
        for index, node in enumerate(self.nodes):
            first = index * CLUSTER_SLOTS // size
            last = (index + 1) * CLUSTER_SLOTS // size - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.command("CLUSTER", "MEET", "127.0.0.1", seed.port, seed.cluster_bus_port)

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Until every running node reports cluster_state:ok and knows every node."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while True:
            states = [cluster_info(n) for n in self.nodes if n.running]
            if all(
                s.get("cluster_state") == "ok"
                and int(s.get("cluster_known_nodes", 0)) == len(self.nodes)
                for s in states
            ):
                return
            if time.monotonic() > deadline:
                raise ValkeyStartError(f"cluster not ok after set-up: {states}")
            time.sleep(0.1)

    def stop_node(self, index: int) -> None:
        self.nodes[index].stop()

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill()

    def start_node(self, index: int) -> None:
        """Brings a stopped node back on its port with its node id (kept in nodes-<port>.conf);
        it comes back empty and owns the same slots."""
        self.nodes[index].start()
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
