"""How long `atom-tier plan` takes on the real traces: one configuration, and a sweep of ten.

    .venv/bin/python bench/plan_speed.py [--traces /work/shared/traces --users 32]

The deployment is the one docs/tuning.md works out for MiniMax-M2.5 on 2x MI300X (126,976 KV
bytes per token at FP8, about 800K tokens of device KV): only the sizes matter for the time.
Prints each phase's time and the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from three_arms_setup import machine

from atom_tier.plan.deployment import Deployment
from atom_tier.plan.sweep import run_sweep
from atom_tier.plan.workload import WorkloadOptions, build_workload
from atom_tier.replay.traces import load_traces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--max-context", type=int, default=196_608)
    parser.add_argument("--request-s", type=float, default=0.0)
    opts = parser.parse_args()
    print(f"machine: {machine()}")
    deployment = Deployment(126_976, 800_000, "MiniMax-M2.5 FP8 KV, 800K device tokens")
    start = time.perf_counter()
    traces = load_traces(opts.traces)
    loaded = time.perf_counter()
    options = WorkloadOptions(
        users=opts.users, max_context=opts.max_context, request_s=opts.request_s
    )
    workload = build_workload(traces.sessions, options, chunk_tokens=256, block_tokens=16)
    built = time.perf_counter()
    print(
        f"traces: {traces.files} files, {len(traces.sessions)} sessions; workload: "
        f"{len(workload.requests):,} requests, {opts.users} users, max context "
        f"{opts.max_context:,}, request {opts.request_s:g} s"
    )
    print(f"load traces: {loaded - start:.1f} s; build workload: {built - loaded:.1f} s")
    for label, dram, nvme in (
        ("one configuration (DRAM 64 GiB + NVMe 1000 GiB)", [64.0], [1000.0]),
        ("sweep of 10 (DRAM 0,16,32,64,128 x NVMe 0,1000)", [0, 16, 32, 64, 128], [0, 1000]),
    ):
        begin = time.perf_counter()
        sweep = run_sweep(
            workload, deployment, dram_gb=dram, nvme_gb=nvme, request_s=opts.request_s
        )
        took = time.perf_counter() - begin
        best = max(c.result.hit_rate for c in sweep.configurations)
        print(
            f"{label}: simulation {took:.1f} s, with loading {took + built - start:.1f} s "
            f"(best hit rate {best:.1%}, ceiling {sweep.ceiling:.1%})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
