"""Overhead of the tiered connector at base load: TTFT with AtomTierConnector on vs off.

Two real CPU vLLM servers on the same model, one with the connector and one without; the same
never-repeated prompts (no prefix reuse, no eviction pressure: the connector can only cost)
go to both, alternating which server is asked first. TTFT is the time to the first streamed
token. Prints the machine, per-arm statistics and the ratios.

Layouts (``--layout``):

``shared`` (default) Both servers pinned to the same CPU (``taskset`` for all processes,
           ``VLLM_CPU_OMP_THREADS_BIND`` for OpenMP threads), the client on the other one.
           Only the server being timed runs: the other is frozen (SIGSTOP of its process
           group) and thawed for its own request. Same core, same caches, requests
           interleaved one by one, so neither core placement nor drift over time can favour
           an arm. Each request is read to its end and the server is given a moment to finish
           its post-request work before it is frozen again.
``split``  Each server pinned to its own CPU, both running; passes swap the cores (every
           other pass) and the start order (passes 3 and 4). Core placement moved single
           passes by up to 8 points on this VM.

Unpinned, both servers' OpenMP threads spin on the same cores after every forward pass and
each server's TTFT picks up the other's spinning: hundreds of milliseconds of noise on 2
cores, far larger than what is measured.

``--compare shared`` measures the shared tier's lookup cost instead: both arms run the
connector with the same DRAM tier, and arm ``on`` adds the shared tier (ATOM_TIER_SHARED_URL,
a real Valkey/Redis server started by this script, its cap far above the run). No prompt
repeats, so every lookup of arm ``on`` misses in the shared tier: what it costs is the
AsyncLookupManager's RETRY round, the pipelined EXISTS and the stores.

    .venv/bin/python bench/connector_overhead.py [--model tiny|bench] [--prompts 60]
        [--tokens 600] [--passes 4] [--layout shared|split] [--compare connector|shared]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from three_arms_setup import build_bench_model, machine

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.tiny_model import build_tiny_model
from atom_tier.devtools.valkey_server import ValkeyServer

CONNECTOR = json.dumps({"kv_connector": "AtomTierConnector", "kv_role": "kv_both"})
ARMS = ("off", "on")
BASE_ENV = {"PYTHONHASHSEED": "0", "ATOM_TIER_DRAM_GB": "1"}


def arm_setup(arm: str, shared_url: str | None) -> tuple[list[str], dict[str, str]]:
    """(server arguments, environment) of an arm. Without ``shared_url``: the connector off
    vs on. With it: the connector in both, and the shared tier in ``on`` only."""
    if shared_url is None:
        return (["--kv-transfer-config", CONNECTOR] if arm == "on" else []), dict(BASE_ENV)
    env = dict(BASE_ENV, ATOM_TIER_SHARED_URL=shared_url) if arm == "on" else dict(BASE_ENV)
    return ["--kv-transfer-config", CONNECTOR], env


class PinnedServer(CpuVllmServer):
    """A CPU server whose processes and OpenMP threads all run on one CPU."""

    def __init__(self, model_dir: Path, *, cpu: int, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        self.cpu = cpu
        self.extra_env["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu)

    def command(self) -> list[str]:
        return ["taskset", "-c", str(self.cpu), *super().command()]


def ttft_seconds(
    client: httpx.Client, server: CpuVllmServer, prompt: list[int], read_to_end: bool = False
) -> float:
    """TTFT of one request; with ``read_to_end`` the stream is read to its end, so nothing of
    the request is left running afterwards (else it is dropped after the first token)."""
    payload = {
        "model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True,
    }  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", server.base_url + "/v1/completions", json=payload) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if first is None and line.startswith("data: ") and '"text"' in line:
                first = time.perf_counter() - started
                if not read_to_end:
                    break
    if first is None:
        raise RuntimeError("no token streamed")
    return first


def trimmed_mean(values: list[float], cut: float = 0.05) -> float:
    """Mean without the top and bottom ``cut`` fraction (a scheduling hiccup is not TTFT)."""
    ordered = sorted(values)
    drop = int(len(ordered) * cut)
    return statistics.mean(ordered[drop : len(ordered) - drop] or ordered)


def run_pass(
    model: Path,
    work: Path,
    cpus: dict[str, int],
    start_order: tuple[str, ...],
    prompts: list[list[int]],
    warmup: int,
    shared_url: str | None = None,
) -> dict[str, list[float]]:
    setup = {arm: arm_setup(arm, shared_url) for arm in ARMS}
    servers = {
        arm: PinnedServer(
            model, workdir=work, env=setup[arm][1], cpu=cpus[arm], name=f"{arm}-cpu{cpus[arm]}",
            args=setup[arm][0],
        )
        for arm in ARMS
    }  # fmt: skip
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    try:
        for arm in start_order:
            servers[arm].start()
        with httpx.Client(timeout=300) as client:
            for index, prompt in enumerate(prompts):
                order = ARMS if index % 2 == 0 else ARMS[::-1]
                for arm in order:
                    seconds = ttft_seconds(client, servers[arm], prompt)
                    if index >= warmup:
                        times[arm].append(seconds)
    finally:
        for server in servers.values():
            server.stop()
    return times


def run_pass_shared(
    model: Path,
    work: Path,
    cpu: int,
    start_order: tuple[str, ...],
    prompts: list[list[int]],
    warmup: int,
    settle: float = 0.05,
    shared_url: str | None = None,
) -> dict[str, list[float]]:
    """Both servers on ``cpu``; only the one being timed is running (see the module doc)."""
    setup = {arm: arm_setup(arm, shared_url) for arm in ARMS}
    servers = {
        arm: PinnedServer(
            model, workdir=work, env=setup[arm][1], cpu=cpu, name=f"{arm}-cpu{cpu}",
            args=setup[arm][0],
        )
        for arm in ARMS
    }  # fmt: skip
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    started: list[PinnedServer] = []
    try:
        for arm in start_order:
            servers[arm].start()
            started.append(servers[arm])
            os.killpg(servers[arm].pid, signal.SIGSTOP)
        with httpx.Client(timeout=300) as client:
            for index, prompt in enumerate(prompts):
                order = ARMS if index % 2 == 0 else ARMS[::-1]
                for arm in order:
                    os.killpg(servers[arm].pid, signal.SIGCONT)
                    time.sleep(settle)
                    seconds = ttft_seconds(client, servers[arm], prompt, read_to_end=True)
                    time.sleep(settle)
                    os.killpg(servers[arm].pid, signal.SIGSTOP)
                    if index >= warmup:
                        times[arm].append(seconds)
    finally:
        for server in started:
            os.killpg(server.pid, signal.SIGCONT)
        if shared_url is not None and servers["on"] in started:
            # Every prompt is new to the cache (flushed before the pass): a hit would be a bug.
            on = servers["on"]
            hits = on.metric_sum("atom_tier:shared_tier_hits")
            print(f"shared tier hits in arm on: {hits:.0f} (expected 0)")
            # What waiting for the async shared-tier lookup added to each request: vLLM's own
            # histogram, from the first deferred lookup to the request's admission.
            delay = on.metric_sum("vllm:kv_offload_lookup_async_delay_seconds_sum")
            count = on.metric_sum("vllm:kv_offload_lookup_async_delay_seconds_count")
            mean_ms = 1e3 * delay / count if count else 0.0
            print(f"async lookup delay in arm on: {mean_ms:.2f} ms mean over {count:.0f} "
                  "deferred requests (vllm:kv_offload_lookup_async_delay_seconds)")  # fmt: skip
            # The scheduler thread's own wait: the first-key probe of each new prompt.
            probes = on.metric_sum("atom_tier:shared_tier_probes")
            probe_ms = 1e3 * on.metric_sum("atom_tier:shared_tier_probe_seconds") / max(probes, 1)
            print(f"first-key probes in arm on: {probes:.0f}, {probe_ms:.3f} ms mean "
                  "(atom_tier:shared_tier_probe_seconds)")  # fmt: skip
        for server in servers.values():
            server.stop()
    return times


def report(label: str, times: dict[str, list[float]]) -> float:
    """Print one table and its ratios; return the mean TTFT ratio on/off."""
    print(f"\n{label}")
    print("| connector | mean ms | 5%-trimmed mean ms | median ms | p90 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        values = times[arm]
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"| {arm} | {statistics.mean(values) * 1e3:.1f} | {trimmed_mean(values) * 1e3:.1f} "
              f"| {statistics.median(values) * 1e3:.1f} | {p90 * 1e3:.1f} "
              f"| {max(values) * 1e3:.1f} |")  # fmt: skip
    on, off = times["on"], times["off"]
    paired = [a / b for a, b in zip(on, off, strict=True)]
    for name, figure in (
        ("mean", statistics.mean(on) / statistics.mean(off)),
        ("5%-trimmed mean", trimmed_mean(on) / trimmed_mean(off)),
        ("median", statistics.median(on) / statistics.median(off)),
        ("median of per-prompt on/off", statistics.median(paired)),
    ):
        print(f"{name} TTFT on/off: {figure:.3f} ({100 * (figure - 1):+.1f}%)")
    return statistics.mean(on) / statistics.mean(off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("tiny", "bench"), default="tiny")
    parser.add_argument("--hidden", type=int, default=384, help="bench model width")
    parser.add_argument("--layers", type=int, default=4, help="bench model depth")
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--passes",
        type=int,
        default=4,
        help="shared: pass i swaps the start order (i odd); split: pass i swaps the cores "
        "(i odd) and the start order (i = 2, 3)",
    )
    parser.add_argument("--layout", choices=("shared", "split"), default="shared")
    parser.add_argument(
        "--compare",
        choices=("connector", "shared"),
        default="connector",
        help="connector: no connector vs connector; shared: connector vs connector + shared tier",
    )
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs at least 2 CPUs: one for the servers (or one each), one for the client")
    if args.layout == "shared":
        os.sched_setaffinity(0, {0})  # the client; the servers run on CPU 1

    work = Path(tempfile.mkdtemp(prefix="atom-tier-overhead-"))
    if args.model == "tiny":
        model = build_tiny_model(work / "model")
        described = "atom-tier's tiny test model (2 layers, hidden 128)"
    else:
        model = build_bench_model(work / "model", hidden=args.hidden, layers=args.layers)
        described = f"random Qwen3, {args.layers} layers, hidden {args.hidden}"
    rng = random.Random(0)
    prompts = [
        [rng.randrange(10, 500) for _ in range(args.tokens)]
        for _ in range(args.warmup + args.prompts)
    ]
    print(f"machine: {machine()}")
    print(
        f"model: {described}; {args.prompts} distinct {args.tokens}-token prompts per pass, "
        f"{args.warmup} warm-up, alternating order; TTFT to the first streamed token; "
        f"layout {args.layout}"
    )
    cache: ValkeyServer | None = None
    shared_url = None
    if args.compare == "shared":
        cache = ValkeyServer(work / "valkey", maxmemory=8 << 30, maxmemory_policy="allkeys-lru")
        cache.start()
        shared_url = cache.url
        print("arms: off = connector with a DRAM tier; on = the same + shared tier (Valkey/Redis)")
    try:
        run_passes(args, model, work, prompts, shared_url, cache)
    finally:
        if cache is not None:
            cache.close()
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


def run_passes(
    args: argparse.Namespace,
    model: Path,
    work: Path,
    prompts: list[list[int]],
    shared_url: str | None,
    cache: ValkeyServer | None = None,
) -> None:
    pooled: dict[str, list[float]] = {arm: [] for arm in ARMS}
    ratios: list[float] = []
    for index in range(args.passes):
        if cache is not None:
            cache.command("FLUSHALL")  # the same prompts every pass: nothing may hit
        if args.layout == "shared":
            start_order = ARMS if index % 2 == 0 else ARMS[::-1]
            times = run_pass_shared(
                model, work, 1, start_order, prompts, args.warmup, shared_url=shared_url
            )
            label = f"pass {index + 1}: both on CPU 1, {start_order[0]} started first"
        else:
            cpus = {"off": index % 2, "on": 1 - index % 2}
            start_order = ARMS if index % 4 < 2 else ARMS[::-1]
            times = run_pass(
                model, work, cpus, start_order, prompts, args.warmup, shared_url=shared_url
            )
            label = (
                f"pass {index + 1}: off on CPU {cpus['off']}, on on CPU {cpus['on']}, "
                f"{start_order[0]} started first"
            )
        ratios += [report(label, times)]
        for arm in ARMS:
            pooled[arm] += times[arm]
    if args.passes > 1:
        report(f"all {args.passes} passes", pooled)
        spread = ", ".join(f"{100 * (r - 1):+.1f}%" for r in ratios)
        print(f"mean TTFT on/off per pass: {spread} (the pass-to-pass spread is the noise floor)")


if __name__ == "__main__":
    main()
