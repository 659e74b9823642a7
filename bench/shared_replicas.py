"""Two replicas behind a load balancer, on CPU vLLM: private tiers vs one shared tier.

Each arm starts two CPU servers (each pinned to its own CPU, the same model, the same small KV
pool and the same DRAM tier per server) and replays the same traces against both:

    1  private tiers (DRAM each), round-robin routing per request
    2  + shared tier (one Valkey/Redis for both), round-robin routing per request
    3  private tiers (DRAM each), sticky routing per session

Round-robin sends a conversation's next turn to the other replica: with private tiers its
prefix is recomputed there; with the shared tier it is loaded. Sticky routing is the best a
router can do without sharing. Goals (issue 17): hit rate of 2 >= 0.9 x hit rate of 3, and
median TTFT of 1 / median TTFT of 2 >= 3. One table (`atom-tier replay compare`'s) is printed
and its HTML report and plots written into <out>/compare.

    .venv/bin/python bench/shared_replicas.py [--duration 120 --users 8 --dram-gb 0.04 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

from connector_overhead import PinnedServer
from three_arms_setup import build_bench_model, machine

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.valkey_server import ValkeyServer
from atom_tier.replay.cli import replay_against, write_results
from atom_tier.replay.compare import load_runs, markdown_table, write_report
from atom_tier.replay.report import summary
from atom_tier.replay.runner import ReplayOptions
from atom_tier.replay.traces import Session, load_traces

REPO = Path(__file__).resolve().parent.parent
CONNECTOR = json.dumps({"kv_connector": "AtomTierConnector", "kv_role": "kv_both"})
ARMS = {
    "1": ("private tiers, round-robin", "round-robin", False),
    "2": ("shared tier, round-robin", "round-robin", True),
    "3": ("private tiers, sticky", "sticky", False),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--limit-traces", type=int, default=40)
    parser.add_argument("--token-scale", type=float, default=1 / 16)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--think-scale", type=float, default=0.05)
    parser.add_argument("--max-think", type=float, default=20.0)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-blocks", type=int, default=72, help="KV pool per server, blocks")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--dram-gb", type=float, default=0.04, help="DRAM tier per server")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--arms", default="123")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "shared-replicas")
    return parser.parse_args()


def run_arm(
    arm: str, opts: argparse.Namespace, sessions: tuple[Session, ...], model_dir: Path
) -> dict[str, Any]:
    label, routing, shared = ARMS[arm]
    workdir = opts.out / f"arm-{arm}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    args = [
        "--num-gpu-blocks-override", str(opts.kv_blocks),
        "--max-model-len", str(opts.max_model_len),
        "--kv-transfer-config", CONNECTOR,
    ]  # fmt: skip
    env = {"ATOM_TIER_DRAM_GB": str(opts.dram_gb), "PYTHONHASHSEED": "0"}
    cache = None
    if shared:
        cache = ValkeyServer(workdir / "valkey", maxmemory=2 << 30, maxmemory_policy="allkeys-lru")
        cache.start()
        env["ATOM_TIER_SHARED_URL"] = cache.url
    servers: list[CpuVllmServer] = [
        PinnedServer(model_dir, workdir=workdir, args=args, env=env, cpu=cpu, name=f"r{cpu}")
        for cpu in (0, 1)
    ]
    print(f"\n== arm {arm} ({label})", flush=True)
    try:
        for server in servers:
            server.start()
        options = ReplayOptions(
            duration=opts.duration,
            start_users=opts.users,
            max_users=opts.users,
            think_scale=opts.think_scale,
            max_think=opts.max_think,
            recycle=True,
            seed=opts.seed,
            routing=routing,
            label=f"arm {arm}: {label}",
        )
        result = asyncio.run(
            replay_against(
                [s.base_url for s in servers],
                sessions,
                options,
                token_scale=opts.token_scale,
                max_output_tokens=opts.max_output_tokens,
            )
        )
    finally:
        for server in servers:
            server.stop()
        if cache is not None:
            cache.close()
    write_results(result, workdir / "results")
    return {**summary(result), "load_average": os.getloadavg()[0]}


def main() -> int:
    opts = parse_args()
    opts.out.mkdir(parents=True, exist_ok=True)
    traces = load_traces(opts.traces, limit=opts.limit_traces)
    print(f"machine: {machine()}")
    print(
        f"traces: {opts.traces} ({len(traces.sessions)} sessions), token scale "
        f"{opts.token_scale:g}, {opts.users} users, {opts.duration:.0f} s per arm, "
        f"KV pool {opts.kv_blocks} blocks and DRAM tier {opts.dram_gb} GiB per server"
    )
    model_dir = build_bench_model(
        opts.out / f"bench-model-h{opts.hidden}-l{opts.layers}",
        hidden=opts.hidden,
        layers=opts.layers,
    )
    results = {arm: run_arm(arm, opts, traces.sessions, model_dir) for arm in opts.arms}
    runs = load_runs([opts.out / f"arm-{arm}" / "results" for arm in opts.arms])
    print("\n" + "\n".join(markdown_table(runs)))
    write_report(runs, opts.out / "compare")
    if {"1", "2", "3"} <= results.keys():
        ttft = results["1"]["ttft_p50_s"] / results["2"]["ttft_p50_s"]
        hits = results["2"]["hit_rate"] / results["3"]["hit_rate"]
        print(f"\nmedian TTFT 1 / 2: {ttft:.2f} (goal >= 3)")
        print(f"hit rate 2 / 3: {hits:.2f} (goal >= 0.9)")
    for arm, result in results.items():
        print(f"arm {arm}: load average {result['load_average']:.1f} at its end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
