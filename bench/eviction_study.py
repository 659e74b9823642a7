"""DRAM-tier eviction policies on the real traces: hit tokens per policy across a DRAM sweep.

    .venv/bin/python bench/eviction_study.py [--traces /work/shared/traces] [--setups 4,32]

The planner's simulation (``atom_tier.plan``) of the replay's workload, with the deployment of
bench/plan_speed.py (MiniMax-M2.5 FP8 KV, 126,976 bytes per token, 800K tokens of device KV)
and no NVMe tier. Two workloads: the planner's defaults (4 users, no max context) and the
published setup (32 users, max context 196,608). DRAM sizes are fractions of each workload's
working-set peak (tokens used before and again after a request, `atom_tier.plan.sweep`).

``min`` is Belady's MIN with bypass (``atom_tier.plan.bound``): not a policy but an upper bound
on the DRAM hit tokens of every policy on the same workload and DRAM size.

Then, for LRU and sticky at a few sizes, the two questions of issue 19
(`atom_tier.plan.eviction_study`): does the policy evict the session that returns next
(share of kept sessions that return later than the victim's: 1 = worst choice, 0 = best), and
how many tokens sat in the tier behind a miss (stranded) or behind an absent predecessor.
Prints the tables and the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from three_arms_setup import machine

from atom_tier.plan.bound import belady_min
from atom_tier.plan.deployment import Deployment
from atom_tier.plan.eviction_study import study_evictions
from atom_tier.plan.simulator import DRAM, HierarchySpec, TierSpec, device_hits, simulate
from atom_tier.plan.sweep import working_set
from atom_tier.plan.workload import WorkloadOptions, build_workload
from atom_tier.replay.traces import load_traces

DEPLOYMENT = Deployment(126_976, 800_000, "MiniMax-M2.5 FP8 KV, 800K device tokens")
SETUPS = {
    # No warm prefix: the tables in docs/tuning.md were simulated before the planner had one.
    4: WorkloadOptions(warm_prefix_pct=0.0),  # otherwise the planner's defaults
    32: WorkloadOptions(users=32, max_context=196_608, warm_prefix_pct=0.0),  # published setup
}


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--setups", default="4,32", help="users of each workload: 4 and/or 32")
    parser.add_argument("--policies", default="lru,arc,s3fifo,sticky,min")
    parser.add_argument("--fractions", default="0.05,0.1,0.2,0.33,0.5,0.75,1,1.5")
    parser.add_argument("--diagnose", default="0.2,0.5,1", help="fractions for the questions")
    opts = parser.parse_args()
    policies = [p for p in opts.policies.split(",") if p]
    print(f"machine: {machine()}")
    traces = load_traces(opts.traces)
    chunk = 256
    for users in (int(u) for u in opts.setups.split(",")):
        options = SETUPS[users]
        workload = build_workload(traces.sessions, options, chunk_tokens=chunk, block_tokens=16)
        device = device_hits(workload, DEPLOYMENT.device_kv_tokens // chunk)
        peak = max(working_set(workload))
        prompt = sum(r.input_tokens for r in workload.requests)
        print(
            f"\n{users} users, max context {options.max_context or 'none'}: "
            f"{len(workload.requests):,} requests, {prompt / 1e6:,.1f}M prompt tokens, device "
            f"hits {sum(device) / 1e6:,.1f}M, working-set peak {peak / 1e6:.2f}M tokens "
            f"({peak * DEPLOYMENT.kv_bytes_per_token / 2**30:,.0f} GiB)"
        )
        heads = [f"{p} (bound)" if p == "min" else p for p in policies]
        print("| DRAM (x peak) | GiB | " + " | ".join(heads) + " |")
        print("|---|---|" + "---|" * len(policies))
        for fraction in _floats(opts.fractions):
            chunks = int(peak * fraction) // chunk
            gib = chunks * chunk * DEPLOYMENT.kv_bytes_per_token / 2**30
            cells = []
            for policy in policies:
                if policy == "min":
                    hits = belady_min(workload, device, chunks).hit_tokens
                else:
                    spec = HierarchySpec(TierSpec(DRAM, chunks, policy))
                    hits = simulate(workload, device, spec).tiers[DRAM].hit_tokens
                cells.append(f"{hits / 1e6:,.1f}M")
            print(f"| {fraction:g} | {gib:,.0f} | " + " | ".join(cells) + " |", flush=True)
        print(
            "\n| DRAM (x peak) | policy | DRAM hits | victims returning | kept sessions "
            "returning later | stranded tokens | orphan share |"
        )
        print("|---|---|---|---|---|---|---|")
        for fraction in _floats(opts.diagnose):
            for policy in ("lru", "sticky"):
                begin = time.perf_counter()
                facts = study_evictions(workload, device, int(peak * fraction) // chunk, policy)
                share = facts.victims_returning / facts.victims if facts.victims else 0.0
                print(
                    f"| {fraction:g} | {policy} | {facts.hit_tokens / 1e6:,.1f}M | "
                    f"{share:.0%} of {facts.victims:,} | {facts.returns_before_kept:.2f} | "
                    f"{facts.stranded_tokens / 1e6:,.1f}M | {facts.orphan_share:.1%} | "
                    f"({time.perf_counter() - begin:.0f} s)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
