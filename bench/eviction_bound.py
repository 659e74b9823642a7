"""How many DRAM hit tokens could any policy get on the three-arm replay? Issue 19's bound.

    PYTHONPATH=. .venv/bin/python bench/eviction_bound.py [three_arms.py flags] \
        [--warm-prefix-pcts 0,0.5] [--request-s 1,1.5,2,3,5,7.5] [--policies lru,sticky] \
        [--arm out/three-arms/arm-B ...]

The workload of ``bench/three_arms.py`` (its defaults or the same flags), built as
``bench/plan_vs_arms.py`` builds it with a constant request time (``--request-s``, each value
in turn; a request holds its device blocks that long) over the whole duration, for each
warm-prefix share. Arm B's DRAM tier (``--dram-gb``, 81 chunks of 256 tokens by default), no
NVMe tier, untimed simulation (so the device hits are the same under every DRAM policy).
Per row: the simulated DRAM hit tokens of each policy, Belady's MIN with bypass
(``atom_tier.plan.bound``: an upper bound on every policy's DRAM hit tokens, not a policy),
the ratios to LRU, and what an infinite DRAM tier would hit. Prints the table and the machine.

With ``--arm`` (an arm's folder as three_arms.py leaves it), one more row per arm: the requests
that arm completed, sent when it sent them (its ``results/requests.csv``, as
``plan_vs_arms.py --measured-times``; built with three_arms.py's ``--warm-prefix-pct``), each
holding its device blocks for the server's mean inference time (``metrics-end.txt``): the
bound on the order of requests a real run produced.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from statistics import fmean
from typing import Any

from plan_vs_arms import (
    BLOCK_TOKENS,
    arm_workload_options,
    at_measured_times,
    kv_bytes_per_token,
    server_times,
)
from three_arms import METRICS_END
from three_arms import parse_args as arm_args
from three_arms_setup import machine

from atom_tier.plan.bound import belady_min
from atom_tier.plan.simulator import DRAM, HierarchySpec, TierSpec, device_hits, simulate
from atom_tier.plan.sweep import working_set
from atom_tier.plan.workload import Workload, build_workload
from atom_tier.replay.traces import load_traces
from atom_tier.sizing import GIB


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ratio(value: int, base: int) -> str:
    return f"{value / base:.2f}" if base else ("-" if value == 0 else "inf")


def _workloads(
    opts: argparse.Namespace, mine: argparse.Namespace, sessions: Any
) -> Iterator[tuple[str, str, Workload, float]]:
    """(warm prefix, request time, workload, seconds a request holds its device blocks)."""

    def build(warm: float, request_s: float, duration: float) -> Workload:
        options = arm_workload_options(
            opts, request_s=request_s, duration=duration, warm_prefix_pct=warm
        )
        return build_workload(
            sessions, options, chunk_tokens=mine.chunk_tokens, block_tokens=BLOCK_TOKENS
        )

    for warm in _floats(mine.warm_prefix_pcts):
        for request_s in _floats(mine.request_s):
            yield f"{warm:g}", f"{request_s:g}", build(warm, request_s, opts.duration), request_s
    for arm in mine.arm:
        sent = arm / "results" / "requests.csv"
        with sent.open() as handle:
            latency = fmean(float(r["latency_s"]) for r in csv.DictReader(handle) if r["ok"] == "1")
        times = server_times(arm / METRICS_END)
        hold_s = times["running_s"] if times is not None else latency
        # As plan_vs_arms.py: plan well past the arm's end and keep what it sent.
        workload = at_measured_times(build(opts.warm_prefix_pct, latency, opts.duration * 4), sent)
        yield f"{opts.warm_prefix_pct:g}", f"{arm.name}: sent as measured", workload, hold_s


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--warm-prefix-pcts", default="0,0.5")
    own.add_argument("--request-s", default="1,1.5,2,3,5,7.5", help="constant request times")
    own.add_argument("--policies", default="lru,sticky", help="simulated; lru first")
    own.add_argument("--chunk-tokens", type=int, default=256)
    own.add_argument("--arm", type=Path, action="append", default=[], help="an arm's folder")
    mine, rest = own.parse_known_args(argv)
    opts = arm_args(rest)
    policies = [p for p in mine.policies.split(",") if p]
    if policies[0] != "lru":
        raise SystemExit("--policies: lru first (the ratios are to LRU)")
    chunk = mine.chunk_tokens
    per_chunk = chunk * kv_bytes_per_token(opts)
    dram = int(opts.dram_gb * GIB // per_chunk)
    device_chunks = opts.kv_blocks * BLOCK_TOKENS // chunk
    traces = load_traces(opts.traces, limit=opts.limit_traces, seed=opts.seed)
    print(f"machine: {machine()} ({platform.python_version()})")
    print(
        f"DRAM tier {dram} chunks of {chunk} tokens ({dram * chunk:,} tokens), device "
        f"{device_chunks} chunks; {opts.users} users, {opts.duration:g} s, token scale "
        f"{opts.token_scale:g}, think x{opts.think_scale:g} capped at {opts.max_think:g} s"
    )
    heads = [*policies, "min (bound)"]
    print(
        "\n| warm prefix | request s (or send times) | requests | prompt tokens | device hits "
        "| working-set peak | DRAM ÷ peak | " + " | ".join(heads) + " | "
        + " | ".join(f"{p} ÷ lru" for p in heads[1:])
        + " | infinite DRAM |"
    )  # fmt: skip
    print("|---" * (7 + 2 * len(heads)) + "|")
    for warm, request, workload, hold_s in _workloads(opts, mine, traces.sessions):
        device = device_hits(workload, device_chunks, hold_s)
        peak = max(working_set(workload), default=0)
        hits = [
            simulate(workload, device, HierarchySpec(TierSpec(DRAM, dram, policy)))
            .tiers[DRAM]
            .hit_tokens
            for policy in policies
        ]
        bound = belady_min(workload, device, dram)
        hits.append(bound.hit_tokens)
        prompt = sum(r.input_tokens for r in workload.requests)
        cells = [
            warm,
            request,
            f"{len(workload.requests):,}",
            f"{prompt:,}",
            f"{sum(device):,}",
            f"{peak:,}",
            f"{dram * chunk / peak:.2f}" if peak else "-",
            *(f"{h:,}" for h in hits),
            *(_ratio(h, hits[0]) for h in hits[1:]),
            f"{bound.reachable_chunks * chunk:,}",
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
