"""How many DRAM hit tokens could any policy get on the three-arm replay? Issue 19's bound.

    PYTHONPATH=. .venv/bin/python bench/eviction_bound.py [three_arms.py flags] \
        [--warm-prefix-pcts 0,0.5] [--request-s 1,2,3,5,7.5] [--policies lru,sticky]

The workload of ``bench/three_arms.py`` (its defaults or the same flags), built as
``bench/plan_vs_arms.py`` builds it with a constant request time (``--request-s``, each value
in turn; a request holds its device blocks that long) over the whole duration, for each
warm-prefix share. Arm B's DRAM tier (``--dram-gb``, 81 chunks of 256 tokens by default), no
NVMe tier, untimed simulation (so the device hits are the same under every DRAM policy).
Per row: the simulated DRAM hit tokens of each policy, Belady's MIN with bypass
(``atom_tier.plan.bound``: an upper bound on every policy's DRAM hit tokens, not a policy),
the ratios to LRU, and what an infinite DRAM tier would hit. Prints the table and the machine.
"""

from __future__ import annotations

import argparse
import platform
import sys

from plan_vs_arms import BLOCK_TOKENS, kv_bytes_per_token
from three_arms import parse_args as arm_args
from three_arms_setup import machine

from atom_tier.plan.bound import belady_min
from atom_tier.plan.simulator import DRAM, HierarchySpec, TierSpec, device_hits, simulate
from atom_tier.plan.sweep import working_set
from atom_tier.plan.workload import WorkloadOptions, build_workload
from atom_tier.replay.traces import load_traces
from atom_tier.sizing import GIB


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _ratio(value: int, base: int) -> str:
    return f"{value / base:.2f}" if base else ("-" if value == 0 else "inf")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--warm-prefix-pcts", default="0,0.5")
    own.add_argument("--request-s", default="1,2,3,5,7.5", help="constant request times")
    own.add_argument("--policies", default="lru,sticky", help="simulated; lru first")
    own.add_argument("--chunk-tokens", type=int, default=256)
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
        "\n| warm prefix | request s | requests | prompt tokens | device hits | working-set "
        "peak | DRAM ÷ peak | " + " | ".join(heads) + " | "
        + " | ".join(f"{p} ÷ lru" for p in heads[1:])
        + " | infinite DRAM |"
    )  # fmt: skip
    print("|---" * (8 + 2 * len(heads)) + "|")
    for warm in _floats(mine.warm_prefix_pcts):
        for request_s in _floats(mine.request_s):
            options = WorkloadOptions(
                users=opts.users,
                token_scale=opts.token_scale,
                think_scale=opts.think_scale,
                max_think=opts.max_think,
                max_context=opts.max_model_len,
                max_output_tokens=opts.max_output_tokens,
                request_s=request_s,
                duration=opts.duration,
                recycle=True,
                seed=opts.seed,
                warm_prefix_pct=warm,
            )
            workload = build_workload(
                traces.sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS
            )
            device = device_hits(workload, device_chunks, request_s)
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
                f"{warm:g}",
                f"{request_s:g}",
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
