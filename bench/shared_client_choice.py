"""Which Python client the shared tier uses: each candidate against one real server on loopback,
next to redis-benchmark (or valkey-benchmark) SET/GET of the same value size in the same run.

Measured per value size (MB/s = 1e6 bytes/s, best of --repeat passes, passes interleaved so
noise is shared; every GET checks the length it got back):

* SET and GET throughput, one connection and --threads threads (one key per thread, overwritten,
  as redis-benchmark does without -r)
* pipelined EXISTS of 1,000 keys (half present), median of 30 round trips, standalone and on a
  three-node cluster; and the same checks as one Lua script (EVALSHA) through redis-py
* and, run rather than read from documentation: unix:// and rediss:// (TLS) connections, and on
  a three-node cluster a key whose slot is being migrated (ASK) and then moved (MOVED)

Candidates not installed are listed as such. `redis-py (Python parser)` is redis-py with
hiredis's reply parser switched off (its command packer stays), to show what the parser is
worth; `redis-py+hiredis, views` passes SET values as memoryview (see `redis_py`).

    .venv/bin/python bench/shared_client_choice.py [--sizes-kib 128 2048 16384] [--threads 4]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atom_tier.devtools.valkey_cluster import ValkeyCluster
from atom_tier.devtools.valkey_server import ValkeyServer, command

KIB = 1024
EXISTS_KEYS = 1000


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(server: ValkeyServer) -> list[str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    info = server.command("INFO", "server")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)
    served = fields.get("valkey_version") or fields.get("redis_version", "?")
    clients = ", ".join(
        f"{d} {version(d)}"
        for d in ("redis", "hiredis", "valkey", "libvalkey", "valkey-glide-sync")
    )
    return [
        f"cpu: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores usable",
        f"kernel: {platform.release()}, python {platform.python_version()}",
        f"server: {server.binary} ({fields.get('server_name', 'redis')} {served}, "
        f"{fields.get('multiplexing_api', '?')})",
        f"clients: {clients}",
    ]


# -- candidates: each builds (set, get, exists_pipeline) callables on one shared client ----------
Ops = tuple[Callable[[bytes, bytes], Any], Callable[[bytes], Any], Callable[[list[bytes]], Any]]


def redis_py(port: int, threads: int, hiredis: bool = True, views: bool = False) -> Ops:
    """`views`: values passed as memoryview, which makes redis-py send them as they are; bytes
    go through hiredis.pack_command, which copies them into one buffer (slow past ~1 MiB)."""
    import redis
    from redis._parsers import _RESP2Parser

    extra: dict[str, Any] = {} if hiredis else {"parser_class": _RESP2Parser}
    if hiredis and not redis.utils.HIREDIS_AVAILABLE:
        raise RuntimeError("hiredis not importable")
    pool = redis.BlockingConnectionPool(
        host="127.0.0.1", port=port, max_connections=threads, **extra
    )
    client = redis.Redis(connection_pool=pool)

    def exists_many(keys: list[bytes]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return pipe.execute()

    if views:
        return lambda key, value: client.set(key, memoryview(value)), client.get, exists_many
    return client.set, client.get, exists_many


def valkey_py(port: int, threads: int, views: bool = False) -> Ops:
    import valkey

    pool = valkey.BlockingConnectionPool(host="127.0.0.1", port=port, max_connections=threads)
    client = valkey.Valkey(connection_pool=pool)

    def exists_many(keys: list[bytes]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return pipe.execute()

    if views:
        return lambda key, value: client.set(key, memoryview(value)), client.get, exists_many
    return client.set, client.get, exists_many


def glide_sync(port: int, threads: int) -> Ops:
    import glide_sync as glide

    # One multiplexed connection shared by all threads (GLIDE's design); request_timeout is in
    # ms and its 250 ms default is too short for 16 MiB values.
    config = glide.GlideClientConfiguration(
        [glide.NodeAddress("127.0.0.1", port)], request_timeout=30_000
    )
    client = glide.GlideClient.create(config)

    def exists_many(keys: list[bytes]) -> list[Any] | None:
        batch = glide.Batch(is_atomic=False)
        for key in keys:
            batch.exists([key])
        return client.exec(batch, raise_on_error=True)

    return client.set, client.get, exists_many


CANDIDATES: dict[str, Callable[[int, int], Ops]] = {
    "redis-py+hiredis": redis_py,
    "redis-py+hiredis, views": lambda port, threads: redis_py(port, threads, views=True),
    "redis-py (Python parser)": lambda port, threads: redis_py(port, threads, hiredis=False),
    "valkey-py+libvalkey": valkey_py,
    "valkey-py+libvalkey, views": lambda port, threads: valkey_py(port, threads, views=True),
    "valkey-glide-sync": glide_sync,
}


def run_threads(threads: int, work: Callable[[int], None]) -> float:
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def throughput(ops: Ops, size: int, count: int, threads: int) -> tuple[float, float]:
    """(SET MB/s, GET MB/s) for `count` operations of `size` bytes spread over `threads`."""
    set_, get, _ = ops
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    per_thread = max(1, count // threads)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for _ in range(per_thread):
                set_(b"bench:%d" % index, value)
        except BaseException as error:
            errors.append(error)

    def reader(index: int) -> None:
        try:
            for _ in range(per_thread):
                got = get(b"bench:%d" % index)
                if got is None or len(got) != size:
                    raise AssertionError(f"GET returned {None if got is None else len(got)} bytes")
        except BaseException as error:
            errors.append(error)

    set_seconds = run_threads(threads, writer)
    get_seconds = run_threads(threads, reader)
    if errors:
        raise errors[0]
    total = per_thread * threads * size / 1e6
    return total / set_seconds, total / get_seconds


def exists_median_ms(exists_many: Callable[[list[bytes]], Any], set_: Callable[..., Any]) -> float:
    keys = [b"exists:%d" % i for i in range(EXISTS_KEYS)]
    for key in keys[::2]:
        set_(key, b"1")
    times = []
    for _ in range(30):
        start = time.perf_counter()
        found = exists_many(keys)
        times.append(time.perf_counter() - start)
        if found is None or sum(int(bool(x)) for x in found) != EXISTS_KEYS // 2:
            raise AssertionError("pipelined EXISTS miscounted")
    return statistics.median(times) * 1e3


EXISTS_SCRIPT = (
    "local r = {} for i, k in ipairs(KEYS) do r[i] = redis.call('EXISTS', k) end return r"
)


def lua_exists_median_ms(port: int) -> float:
    """The same 1,000 checks as one EVALSHA (standalone only: a cluster script's keys must
    share a slot), through redis-py."""
    import redis

    client = redis.Redis(port=port)
    sha = client.script_load(EXISTS_SCRIPT)
    return exists_median_ms(lambda ks: client.evalsha(sha, len(ks), *ks), client.set)


def benchmark_tool(
    server: ValkeyServer, size: int, count: int, clients: int
) -> tuple[float, float]:
    """(SET MB/s, GET MB/s) from redis-benchmark/valkey-benchmark with `clients` connections."""
    tool = shutil.which("valkey-benchmark") or shutil.which("redis-benchmark")
    if tool is None:
        return float("nan"), float("nan")
    done = subprocess.run(
        [tool, "-h", "127.0.0.1", "-p", str(server.port), "-t", "set,get", "-n", str(count),
         "-d", str(size), "-c", str(clients), "--csv"],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    rates = {}
    for line in done.stdout.splitlines():
        parts = [p.strip('"') for p in line.split(",")]
        if parts[0] in ("SET", "GET"):
            rates[parts[0]] = float(parts[1]) * size / 1e6
    return rates["SET"], rates["GET"]


# -- feature checks, run for real ------------------------------------------------------------
def check_unix_and_tls(name: str, server: ValkeyServer) -> str:
    assert server.unix_socket_path is not None
    if name.startswith("redis-py"):
        import redis

        unix = redis.Redis.from_url(server.unix_url).ping()
        tls = redis.Redis.from_url(server.tls_url, ssl_ca_certs=str(server.ca_path)).ping()
    elif name.startswith("valkey-py"):
        import valkey

        unix = valkey.Valkey.from_url(server.unix_url).ping()
        tls = valkey.Valkey.from_url(server.tls_url, ssl_ca_certs=str(server.ca_path)).ping()
    else:
        import glide_sync as glide

        sock = glide.NodeAddress(unix_socket_path=str(server.unix_socket_path))
        unix = glide.GlideClient.create(glide.GlideClientConfiguration([sock])).ping() == b"PONG"
        assert server.tls_port is not None
        tls_config = glide.AdvancedGlideClientConfiguration(
            tls_config=glide.TlsAdvancedConfiguration(root_pem_cacerts=server.ca_path.read_bytes())
        )
        config = glide.GlideClientConfiguration(
            [glide.NodeAddress("127.0.0.1", server.tls_port)],
            use_tls=True,
            advanced_config=tls_config,
        )
        tls = glide.GlideClient.create(config).ping() == b"PONG"
    return f"unix:// {'ok' if unix else 'FAILED'}, TLS {'ok' if tls else 'FAILED'}"


def cluster_client(name: str, cluster: ValkeyCluster) -> Ops:
    if name.startswith("redis-py"):
        from redis.cluster import RedisCluster

        client: Any = RedisCluster.from_url(cluster.url)
    elif name.startswith("valkey-py"):
        from valkey.cluster import ValkeyCluster as ValkeyPyCluster

        client = ValkeyPyCluster.from_url(cluster.url)
    else:
        import glide_sync as glide

        nodes = [glide.NodeAddress("127.0.0.1", n.port) for n in cluster.nodes]
        client = glide.GlideClusterClient.create(glide.GlideClusterClientConfiguration(nodes))

        def exists_many(keys: list[bytes]) -> list[Any] | None:
            batch = glide.ClusterBatch(is_atomic=False)
            for key in keys:
                batch.exists([key])
            return client.exec(batch, raise_on_error=True)

        return client.set, client.get, exists_many

    def pipelined(keys: list[bytes]) -> list[Any]:
        pipe = client.pipeline()
        for key in keys:
            pipe.exists(key)
        return pipe.execute()

    return client.set, client.get, pipelined


def check_ask_and_moved(ops: Ops, cluster: ValkeyCluster, key: bytes) -> str:
    """Migrates `key`'s slot to another node by hand: GET during migration gets ASK from the
    old owner, GET after it gets MOVED; both must return the value."""
    set_, get, _ = ops
    set_(key, b"value")
    slot = command(cluster.nodes[0].port, "CLUSTER", "KEYSLOT", key)
    owners = [n for n in cluster.nodes if command(n.port, "CLUSTER", "COUNTKEYSINSLOT", slot) == 1]
    source = owners[0]
    target = next(n for n in cluster.nodes if n is not source)
    source_id, target_id = (command(n.port, "CLUSTER", "MYID") for n in (source, target))
    command(target.port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    command(source.port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    command(source.port, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
    ask = get(key) == b"value"
    for node in cluster.nodes:
        command(node.port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    moved = get(key) == b"value"
    return f"ASK {'ok' if ask else 'FAILED'}, MOVED {'ok' if moved else 'FAILED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=[128, 2048, 16384])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--mib-per-pass", type=int, default=256, help="bytes moved per pass")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-binary", type=Path)
    args = parser.parse_args()

    results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    notes: dict[str, str] = {}
    with ValkeyServer(binary=args.server_binary, unix_socket=True, tls=True) as server:
        print("\n".join(machine(server)))
        available: dict[str, Callable[[int], Ops]] = {}
        for name, build in CANDIDATES.items():
            try:
                available[name] = lambda threads, build=build: build(server.port, threads)
                available[name](1)
            except (ImportError, RuntimeError) as error:
                available.pop(name)
                notes[name] = f"skipped: {error}"
        for _ in range(args.repeat):
            for size_kib in args.sizes_kib:
                size = size_kib * KIB
                count = max(args.threads * 2, args.mib_per_pass * 2**20 // size)
                for threads in (1, args.threads):
                    results.setdefault(("benchmark tool", size, threads), []).append(
                        benchmark_tool(server, size, count, threads)
                    )
                    for name, build in available.items():
                        results.setdefault((name, size, threads), []).append(
                            throughput(build(threads), size, count, threads)
                        )
                    command(server.port, "FLUSHALL")
        print(f"\nSET/GET MB/s, best of {args.repeat} (connections: 1 | {args.threads})")
        print(f"{'client':27} {'size':>9}  {'SET 1':>8} {'GET 1':>8}  {'SET n':>8} {'GET n':>8}")
        for name in ["benchmark tool", *available]:
            for size_kib in args.sizes_kib:
                row = [
                    max(r[i] for r in results[(name, size_kib * KIB, t)])
                    for t in (1, args.threads)
                    for i in (0, 1)
                ]
                print(f"{name:27} {size_kib:>6} KiB  " + " ".join(f"{v:8.0f}" for v in row[:2])
                      + "  " + " ".join(f"{v:8.0f}" for v in row[2:]))  # fmt: skip
        with ValkeyCluster() as cluster:
            print(f"\npipelined EXISTS of {EXISTS_KEYS} keys (half present), median ms; features")
            for name, build in available.items():
                ops = build(1)
                standalone = exists_median_ms(ops[2], ops[0])
                command(server.port, "FLUSHALL")
                try:
                    cops = cluster_client(name, cluster)
                    clustered = f"{exists_median_ms(cops[2], cops[0]):6.2f}"
                    migration = check_ask_and_moved(cops, cluster, f"{name}:moving".encode())
                except Exception as error:
                    clustered, migration = "failed", f"cluster: {type(error).__name__}: {error}"
                features = check_unix_and_tls(name, server)
                print(f"{name:27} standalone {standalone:6.2f}  cluster {clustered}  "
                      f"{features}, {migration}")  # fmt: skip
                for node in cluster.nodes:
                    node.command("FLUSHALL")
        if "redis-py+hiredis" in available:
            print(
                f"{'redis-py+hiredis, Lua':27} standalone {lua_exists_median_ms(server.port):6.2f}"
            )
        for name, note in notes.items():
            print(f"{name}: {note}")


if __name__ == "__main__":
    sys.exit(main())
