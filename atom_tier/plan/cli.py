"""Command line of ``atom-tier plan``: exit code 0, or 2 with one message on bad input.

The parser is built for every ``atom-tier`` command (``doctor`` too, where vLLM and its
dependencies may be missing), so it imports nothing heavy and reads no settings: the defaults
that come from settings are resolved when the plan runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from atom_tier.plan.deployment import Deployment, PlanInputError, model_kv
from atom_tier.settings import KvCacheDtype, SettingsError, load_settings
from atom_tier.sizing import GIB

if TYPE_CHECKING:
    from atom_tier.plan.workload import WorkloadOptions

EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Simulate the KV cache hierarchy (device prefix cache -> DRAM tier -> NVMe -> shared) "
        "over the workload `atom-tier replay` would send, for every tier size asked, and say "
        "which tiers pay off."
    )
    parser.add_argument(
        "traces", type=Path, nargs="?", help="folder of kv-cache-tester traces (or --metrics)"
    )
    parser.add_argument(
        "--metrics",
        metavar="URL",
        help="instead of traces: a running server's /metrics (http://HOST:PORT, or a saved "
        "copy): too small, too large or right, per tier, from its eviction and hit counters",
    )
    model = parser.add_argument_group("deployment")
    model.add_argument("--model", type=Path, help="config.json, or the checkpoint folder")
    model.add_argument(
        "--kv-bytes-per-token", type=int, help="instead of --model: KV bytes per token"
    )
    model.add_argument(
        "--kv-dtype", help="KV cache dtype (fp8, bf16, ...); default: ATOM_TIER_KV_CACHE_DTYPE"
    )
    model.add_argument("--device-kv-tokens", type=int, help="vLLM's 'GPU KV cache size'")
    model.add_argument("--gpu-gb", type=float, help="memory per GPU, GiB")
    model.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    model.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    model.add_argument("--weights-gb", type=float, help="weights, GiB (default: the index)")
    model.add_argument("--block-tokens", type=int, default=16, help="vLLM's KV block size")
    load = parser.add_argument_group("workload (the replay's options)")
    load.add_argument("--users", type=int, default=4, help="closed-loop users")
    load.add_argument("--max-context", type=int, help="longest prompt (input tokens), tokens")
    load.add_argument(
        "--warm-prefix-pct",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="the replay's (and kv-cache-tester's) canonical prefix shared by every "
        "conversation: this share (0-1) of the largest tool + system tokens; 0 turns it off",
    )
    load.add_argument("--token-scale", type=float, default=1.0)
    load.add_argument("--think-scale", type=float, default=1.0)
    load.add_argument("--max-think", type=float, default=60.0, help="negative: no cap")
    load.add_argument("--max-output-tokens", type=int)
    load.add_argument(
        "--request-s",
        type=float,
        default=0.0,
        help="seconds from sending a request to its answer, queueing included (0: think times "
        "alone set the order)",
    )
    load.add_argument(
        "--hold-s",
        type=float,
        help="seconds a request holds its KV blocks on the device while it runs (vLLM's "
        "request inference time; a queued request holds none), after which it ends and the "
        "DRAM tier updates its recency; default: --request-s",
    )
    load.add_argument("--duration", type=float, help="virtual seconds to simulate")
    load.add_argument("--requests", type=int, help="stop after this many requests")
    load.add_argument("--recycle", action="store_true")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--limit-traces", type=int, metavar="N")
    tiers = parser.add_argument_group("tiers")
    tiers.add_argument("--dram-gb", default="0,16,32,64,128", help="'0,16,32' or 'A:B:STEP'")
    tiers.add_argument("--nvme-gb", default="0", help="'0,1000' or 'A:B:STEP'")
    tiers.add_argument("--shared-gb", type=float, default=0.0, help="a shared tier after NVMe")
    tiers.add_argument("--eviction", help="DRAM policy; default: ATOM_TIER_EVICTION")
    tiers.add_argument("--chunk-tokens", type=int, help="default: ATOM_TIER_CHUNK_TOKENS")
    parser.add_argument("--json", type=Path, help="write every configuration here")
    parser.add_argument("--png", type=Path, help="write the plot here")


def _deployment(args: argparse.Namespace) -> Deployment:
    if args.model is not None:
        kv = model_kv(args.model, args.kv_dtype)
        per_token, explained, weights = kv.bytes_per_token, kv.explanation, kv.weights_bytes
    elif args.kv_bytes_per_token is not None:
        per_token, explained, weights = args.kv_bytes_per_token, "--kv-bytes-per-token", None
    else:
        raise PlanInputError("give the model: --model PATH (config.json) or --kv-bytes-per-token")
    if args.weights_gb is not None:
        weights = int(args.weights_gb * GIB)
    return Deployment.from_inputs(
        kv_bytes_per_token=per_token,
        kv_explanation=explained,
        device_kv_tokens=args.device_kv_tokens,
        gpu_gb=args.gpu_gb,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel=args.tp,
        weights_bytes=weights,
    )


def _resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the options whose defaults are settings (ATOM_TIER_*)."""
    settings = load_settings()
    if args.kv_dtype is None:
        dtype = settings.kv_cache_dtype
        args.kv_dtype = "fp8" if dtype is KvCacheDtype.AUTO else dtype.value
    if args.eviction is None:
        args.eviction = settings.eviction.value
    if args.chunk_tokens is None:
        args.chunk_tokens = settings.chunk_tokens


def _plan(args: argparse.Namespace) -> int:
    from atom_tier.plan.policies import POLICIES
    from atom_tier.plan.report import format_table, to_json, write_json, write_png
    from atom_tier.plan.sweep import parse_sizes, run_sweep, verdict
    from atom_tier.plan.workload import WorkloadOptions
    from atom_tier.replay.plots import MISSING_NOTE

    started = time.perf_counter()
    _resolve_defaults(args)
    dram = parse_sizes(args.dram_gb, "--dram-gb")
    nvme = parse_sizes(args.nvme_gb, "--nvme-gb")
    if args.hold_s is not None and args.hold_s < 0:
        raise PlanInputError(f"--hold-s must not be negative, got {args.hold_s}")
    if args.shared_gb < 0:
        raise PlanInputError(f"--shared-gb must not be negative, got {args.shared_gb}")
    if args.eviction not in POLICIES:
        raise PlanInputError(
            f"--eviction {args.eviction!r}: expected one of {', '.join(sorted(POLICIES))}"
        )
    deployment = _deployment(args)
    options: WorkloadOptions = WorkloadOptions(
        users=args.users,
        token_scale=args.token_scale,
        think_scale=args.think_scale,
        max_think=None if args.max_think < 0 else args.max_think,
        max_context=args.max_context,
        max_output_tokens=args.max_output_tokens,
        request_s=args.request_s,
        duration=args.duration,
        max_requests=args.requests,
        recycle=args.recycle,
        seed=args.seed,
        warm_prefix_pct=args.warm_prefix_pct,
    )
    from atom_tier.plan.workload import build_workload
    from atom_tier.replay.traces import load_traces

    traces = load_traces(args.traces, limit=args.limit_traces, seed=args.seed)
    workload = build_workload(
        traces.sessions, options, chunk_tokens=args.chunk_tokens, block_tokens=args.block_tokens
    )
    sweep = run_sweep(
        workload,
        deployment,
        dram_gb=dram,
        nvme_gb=nvme,
        shared_gb=args.shared_gb,
        eviction=args.eviction,
        request_s=args.request_s,
        hold_s=args.hold_s,
    )
    decided = verdict(sweep)
    print(format_table(sweep, decided))
    if args.json is not None:
        inputs = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        inputs.pop("runner", None)
        write_json(args.json, to_json(sweep, decided, inputs))
        print(f"json: {args.json}")
    if args.png is not None:
        print(f"png: {args.png}" if write_png(args.png, sweep) else MISSING_NOTE)
    print(
        f"({len(sweep.configurations)} configurations, {time.perf_counter() - started:.1f} s; "
        "no time model: no TTFT is estimated)"
    )
    return 0


def _observe(where: str) -> int:
    from atom_tier.plan.observed import format_observed, observe, read_metrics

    print(format_observed(observe(read_metrics(where), where)))
    return 0


def run(args: argparse.Namespace) -> int:
    from atom_tier.replay.traces import ReplayInputError

    try:
        if args.metrics is not None:
            if args.traces is not None:
                raise PlanInputError("give traces or --metrics URL, not both")
            return _observe(args.metrics)
        if args.traces is None:
            raise PlanInputError("give a traces folder, or --metrics URL of a running server")
        return _plan(args)
    except (PlanInputError, ReplayInputError, SettingsError) as error:
        print(f"atom-tier plan: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
