"""Shared tier throughput: SharedChunkStore stores and loads of chunk-sized values against
redis-benchmark (or valkey-benchmark) SET/GET of the same value size, same server, same run
(redis-benchmark without -r: one key, overwritten by SET and read back by GET). The store
writes distinct keys into an emptied server, which allocates fresh memory for each value
while an overwritten key reuses its own: the "SET -r" columns add redis-benchmark SETs of
random keys (-r 100000000, an emptied server, effectively every key new) for that comparison,
and "GET -r" reads random keys of as many values as the store loads (a GET of one key reads
the same cache-hot value every time; the store reads each value once).

The store does everything the tier does per chunk: EXISTS first, header + XXH3 checksum
(+ MAC with --signed), SET NX; on load GET, header/key/length/checksum (+ MAC) checks and the
copy into the caller's buffer. redis-benchmark sends the same number of values of the same
size over as many connections as the store has I/O threads. Passes are interleaved and the
best of --repeat is kept for each, so both sides see the same machine state.

    .venv/bin/python bench/shared_throughput.py [--sizes-kib 256 2048 16384] [--mib 256]
        [--threads 4] [--repeat 3] [--signed]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

from atom_tier.devtools.valkey_server import ValkeyServer
from atom_tier.tiers.shared_store import SharedChunkStore
from atom_tier.tiers.shared_url import parse_shared_url
from atom_tier.tiers.shared_value import Signer

KIB = 1024
JOBS_IN_FLIGHT = 4


def benchmark_binary(server: ValkeyServer) -> str:
    for name in ("valkey-benchmark", "redis-benchmark"):
        found = shutil.which(name) or (server.binary.parent / name)
        if found and Path(found).exists():
            return str(found)
    sys.exit("no valkey-benchmark/redis-benchmark next to the server or on PATH")


def tool_mb_s(
    tool: str,
    server: ValkeyServer,
    test: str,
    size: int,
    count: int,
    threads: int,
    keyspace: int = 0,
) -> float:
    """MB/s (1e6 bytes/s) of redis-benchmark's requests/s for one test; ``keyspace`` > 0 draws
    keys at random from that many (-r), else one key."""
    command = [
        tool, "-p", str(server.port), "-t", test, "-d", str(size), "-n", str(count),
        "-c", str(threads), "-q",
    ]  # fmt: skip
    if keyspace:
        command += ["-r", str(keyspace)]
    if server.password:
        command += ["-a", server.password, "--no-auth-warning"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.findall(r"([\d.]+) requests per second", output.replace("\r", "\n"))
    if not found:
        raise RuntimeError(f"cannot read {tool} output: {output!r}")
    return float(found[-1]) * size / 1e6


def store_mb_s(store: SharedChunkStore, size: int, count: int, seed: int) -> tuple[float, float]:
    """(store MB/s, load MB/s) of ``count`` distinct chunks in jobs of 16 (all stores submitted
    at once, loads JOBS_IN_FLIGHT jobs at a time)."""
    payloads = [memoryview(bytearray(os.urandom(size))) for _ in range(min(count, 16))]
    keys = [seed.to_bytes(4, "big") + i.to_bytes(4, "big") for i in range(count)]
    items = [(key, payloads[i % len(payloads)]) for i, key in enumerate(keys)]
    started = time.perf_counter()
    futures = [store.submit_writes(items[i : i + 16]) for i in range(0, count, 16)]
    written = sum(f.result().written for f in futures)
    store_s = time.perf_counter() - started
    # Loads keep JOBS_IN_FLIGHT jobs going, each into its own buffers, as vLLM's tiering
    # manager does (a promotion job per scheduler step, several steps in flight).
    buffers = [[memoryview(bytearray(size)) for _ in range(16)] for _ in range(JOBS_IN_FLIGHT)]
    in_flight: deque[Future[list[bool]]] = deque()
    started = time.perf_counter()
    loaded = 0
    for job, first in enumerate(range(0, count, 16)):
        if len(in_flight) == JOBS_IN_FLIGHT:  # the oldest job used this job's buffers
            loaded += sum(in_flight.popleft().result())
        outs = buffers[job % JOBS_IN_FLIGHT]
        batch = [(keys[first + j], outs[j]) for j in range(min(16, count - first))]
        in_flight.append(store.submit_reads(batch))
    loaded += sum(sum(f.result()) for f in in_flight)
    load_s = time.perf_counter() - started
    if written != count or loaded != count:
        raise RuntimeError(f"wrote {written} and loaded {loaded} of {count}")
    return count * size / store_s / 1e6, count * size / load_s / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes-kib", type=int, nargs="+", default=[256, 2048, 16384])
    parser.add_argument("--mib", type=int, default=256, help="data per pass and size")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--signed", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atom-tier-shared-bench-"))
    server = ValkeyServer(work, maxmemory=4 << 30, maxmemory_policy="allkeys-lru")
    with server:
        tool = benchmark_binary(server)
        info = server.command("INFO", "server")
        text = info.decode() if isinstance(info, bytes) else str(info)
        version = re.search(r"(?:valkey|redis)_version:(\S+)", text)
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln), "?"
        )
        print(f"machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
              f"Python {platform.python_version()}")  # fmt: skip
        print(f"server: {Path(server.binary).name} {version.group(1) if version else '?'} on "
              f"127.0.0.1 (TCP), benchmark tool {Path(tool).name}; {args.threads} I/O threads "
              f"/ connections; {args.mib} MiB per pass and size; best of {args.repeat}"
              f"{'; chunks signed' if args.signed else ''}")  # fmt: skip
        signer = Signer.from_secret("bench") if args.signed else None
        store = SharedChunkStore(
            parse_shared_url(server.url), b"bench", signer=signer, io_threads=args.threads,
            timeout_s=30,
        )  # fmt: skip
        print(f"data path: {'lean RESP (resp_wire)' if store.client.lean else 'redis-py'}")
        try:
            print(
                "\n| value | store MB/s | SET MB/s | store/SET | load MB/s | GET MB/s | load/GET "
                "| SET -r MB/s | store/SET -r | GET -r MB/s | load/GET -r |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for size_kib in args.sizes_kib:
                size = size_kib * KIB
                count = max(16, args.mib * KIB // size_kib)
                best = dict.fromkeys(("store", "load", "set", "get", "set_r", "get_r"), 0.0)
                for attempt in range(args.repeat):
                    server.command("FLUSHALL")
                    put, got = store_mb_s(store, size, count, seed=attempt)
                    server.command("FLUSHALL")
                    set_ = tool_mb_s(tool, server, "set", size, count, args.threads)
                    get = tool_mb_s(tool, server, "get", size, count, args.threads)
                    server.command("FLUSHALL")
                    set_r = tool_mb_s(tool, server, "set", size, count, args.threads, 10**8)
                    # GET -r over `count` keys, nearly all present (SET 4x as many at random
                    # first: e^-4 = 2 % stay absent and answer nil, which favours the tool).
                    server.command("FLUSHALL")
                    tool_mb_s(tool, server, "set", size, 4 * count, args.threads, count)
                    get_r = tool_mb_s(tool, server, "get", size, count, args.threads, count)
                    measured = {"store": put, "load": got, "set": set_, "get": get,
                                "set_r": set_r, "get_r": get_r}  # fmt: skip
                    for name, value in measured.items():
                        best[name] = max(best[name], value)
                label = f"{size_kib} KiB" if size_kib < 1024 else f"{size_kib // 1024} MiB"
                print(f"| {label} | {best['store']:.0f} | {best['set']:.0f} | "
                      f"{best['store'] / best['set']:.2f} | {best['load']:.0f} | {best['get']:.0f} "
                      f"| {best['load'] / best['get']:.2f} | {best['set_r']:.0f} "
                      f"| {best['store'] / best['set_r']:.2f} | {best['get_r']:.0f} "
                      f"| {best['load'] / best['get_r']:.2f} |")  # fmt: skip
        finally:
            store.close()


if __name__ == "__main__":
    main()
