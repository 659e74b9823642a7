"""The planner against the three arms: predicted vs measured hit tokens per tier and prefill.

Runs ``atom-tier plan``'s simulator on exactly the configuration of ``bench/three_arms.py``
(its defaults, or the same flags: traces, token scale, think times, users, duration, KV pool,
DRAM and NVMe sizes) for each arm whose results are in ``--results`` (``arm-X/results``, as
three_arms.py leaves them; arm S with the sticky DRAM policy), with each request's time from
a time model whose inputs are the arm's (``arm-X/metrics-end.txt``), printed with the result:

- ``--latency steps`` (the default): vLLM's engine steps (atom_tier/plan/steps.py), their two
  costs calibrated to the arm's mean prefill and decode times;
- ``blocks`` or ``throughput``: one server with per-request rates (atom_tier/plan/latency.py:
  vLLM's prefill, decode and inference times, computed and generated tokens, the connector's
  loads), each flag-overridable;
- ``constant``: every request takes the arm's mean latency (how users interleave) and holds
  its device blocks for vLLM's mean inference time.

``--measured-times`` gives each request the arm's own times instead (no time model): looked
up at its first token less the arm's mean prefill time, its chunks stored at its first token,
ended at its end (bench/arm_results.py ``at_measured_times``); ``--jitter 0.05 --seeds 5``
with it moves each request by up to +-5 % of its latency, to show how much the hits hang on
the exact order.

    PYTHONPATH=. .venv/bin/python bench/plan_vs_arms.py [three_arms.py flags] \
        [--results out/three-arms] [--latency steps|blocks|throughput|constant] [--align] \
        [--measured-times [--jitter SHARE --seeds N]] [--json out/plan-vs-arms.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

from arm_results import TIERS, at_measured_times, measured, server_times
from three_arms import METRICS_END, REPO
from three_arms import parse_args as arm_args
from three_arms_setup import machine

from atom_tier.plan.closed_loop import ClosedLoop
from atom_tier.plan.device import DeviceCache
from atom_tier.plan.latency import ServerModel, TimedSimulation, server_model_from_metrics
from atom_tier.plan.simulator import (
    DRAM,
    NVME,
    Hierarchy,
    HierarchySpec,
    TierSpec,
    device_hits,
    simulate,
)
from atom_tier.plan.steps import (
    StepModel,
    StepSimulation,
    StepTargets,
    StepTimes,
    calibrate,
    step_targets_from_metrics,
)
from atom_tier.plan.workload import WorkloadOptions, build_workload
from atom_tier.replay.traces import load_traces
from atom_tier.sizing import GIB

BLOCK_TOKENS = 128  # vLLM's KV block on CPU
GOAL = 0.15


def kv_bytes_per_token(opts: argparse.Namespace) -> int:
    return opts.layers * 2 * 64 * 2 * 2 if opts.model == "bench" else 512


def arm_workload_options(opts: argparse.Namespace, **given: Any) -> WorkloadOptions:
    """The workload three_arms.py's flags ``opts`` replay (recycling on), ``given`` (request
    time, duration, ...) on top."""
    shape: dict[str, Any] = dict(
        users=opts.users,
        token_scale=opts.token_scale,
        think_scale=opts.think_scale,
        max_think=opts.max_think,
        max_context=opts.max_model_len,
        max_output_tokens=opts.max_output_tokens,
        recycle=True,
        seed=opts.seed,
        warm_prefix_pct=opts.warm_prefix_pct,
    )
    return WorkloadOptions(**(shape | given))


def predict(
    opts: argparse.Namespace,
    sessions: Any,
    arm: str,
    request_s: float,
    hold_s: float,
    requests: int | None = None,
    measured_times: Path | None = None,
    server: ServerModel | None = None,
    steps: StepTargets | None = None,
    jitter: tuple[float, int] = (0.0, 0),
    prefill_s: float = 0.0,
) -> dict[str, Any]:
    """``server`` or ``steps``: the time model (each request's own latency; ``steps``: the
    targets of the engine-step model's calibration); None: ``request_s`` and ``hold_s`` for
    every request. ``measured_times``: the arm's requests.csv, each request at its own
    times (:func:`arm_results.at_measured_times`, with the arm's mean prefill time
    ``prefill_s``); ``jitter``: (share of latency, seed) for it."""
    options = arm_workload_options(
        opts,
        request_s=request_s,
        # With the arm's own send times, plan well past its end and keep what it sent.
        duration=opts.duration * (4 if measured_times else 1),
        max_requests=None if measured_times else requests,
    )
    chunk = opts.chunk_tokens
    per_chunk = chunk * kv_bytes_per_token(opts)
    dram = int(opts.dram_gb * GIB // per_chunk) if arm in "BCS" else 0
    nvme = (TierSpec(NVME, int(opts.nvme_gb * GIB // per_chunk)),) if arm == "C" else ()
    spec = HierarchySpec(TierSpec(DRAM, dram, "sticky" if arm == "S" else "lru"), nvme)
    device_chunks = opts.kv_blocks * BLOCK_TOKENS // chunk
    timed, stepped, calibrated = None, None, None
    if steps is not None and measured_times is None:
        runs: list[StepSimulation] = []

        def run_steps(model: StepModel) -> StepTimes:
            sim = StepSimulation(
                spec, device_chunks, model, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS
            )
            sim.run(ClosedLoop(sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS))
            runs.append(sim)
            return sim.times

        calibrated = calibrate(
            run_steps, steps.start(), prefill_s=steps.prefill_s, decode_s=steps.decode_s
        )
        run_steps(calibrated[0])
        stepped = runs[-1]
        result = stepped.result()
        count = len(stepped.times.sent)
    elif server is not None and measured_times is None:
        timed = TimedSimulation(
            spec, device_chunks, server, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS
        )
        workload = build_workload(
            sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS,
            respond=timed.respond,
        )  # fmt: skip
        result = timed.result()
        count = len(workload.requests)
    elif measured_times is not None:
        workload = build_workload(sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS)
        workload, ends = at_measured_times(workload, measured_times, *jitter, prefill_s=prefill_s)
        cache = DeviceCache(workload, device_chunks)
        pairs = zip(workload.requests, ends, strict=True)
        device = [cache.step(r, r.time, end) for r, (_, end) in pairs]
        result = Hierarchy(spec, chunk).run(workload, device, times=ends)
        count = len(workload.requests)
    else:
        workload = build_workload(sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS)
        device = device_hits(workload, device_chunks, hold_s)
        result = simulate(workload, device, spec, hold_s)
        count = len(workload.requests)
    hits = {source: float(result.tiers[name].hit_tokens) if name in result.tiers else 0.0
            for name, source in TIERS}  # fmt: skip
    times = timed.times if timed is not None else stepped.times if stepped is not None else None
    out = {
        "requests": count,
        "prompt_tokens": result.prompt_tokens,
        "hit_tokens": hits,
        "prefill_tokens": float(result.prefill_tokens),
        "request_s": request_s if times is None else None,
        "hold_s": hold_s if times is None else None,
        "mean_latency_s": times.mean_latency_s if times is not None else None,
        "mean_queue_s": times.mean_queue_s if times is not None else None,
    }
    if stepped is not None and calibrated is not None:
        out["step_model"] = dataclasses.asdict(calibrated[0])
        out["calibration_rounds"] = calibrated[1]
        out["mean_prefill_s"] = stepped.times.mean_prefill_s
        out["decode_s_per_token"] = stepped.times.decode_s_per_token
        out["describe"] = calibrated[0].describe()
    return out


def jittered(
    opts: argparse.Namespace, sessions: Any, arm: str, sent: Path, jitter: float, seeds: int,
    prefill_s: float,
) -> dict[str, list[float]]:  # fmt: skip
    """Hit tokens per tier and prefill tokens, sent at the arm's times moved by ``jitter``
    (one list entry per seed)."""
    spread: dict[str, list[float]] = {source: [] for _, source in TIERS}
    spread["prefill"] = []
    for seed in range(seeds):
        pred = predict(
            opts, sessions, arm, 0.0, 0.0, None, sent, jitter=(jitter, seed), prefill_s=prefill_s
        )
        for _, source in TIERS:
            spread[source].append(pred["hit_tokens"][source])
        spread["prefill"].append(pred["prefill_tokens"])
    return spread


def jitter_rows(
    arm: str, got: dict[str, Any], pred: dict[str, Any], spread: dict[str, list[float]],
    jitter: float,
) -> list[str]:  # fmt: skip
    rows = [f"| **{arm}** | sends moved by +-{jitter:.0%} of their latency, "
            f"{len(spread['prefill'])} seeds: min / mean / max vs measured | | | |"]  # fmt: skip
    for _, source in TIERS:
        m = got["hit_tokens"][source]
        if not m:
            continue
        values = spread[source]
        cells = " / ".join(_diff(v, m) for v in (min(values), fmean(values), max(values)))
        rows.append(f"| {arm} hit tokens: {source}, jittered | {m:,.0f} | "
                    f"{_diff(pred['hit_tokens'][source], m)} unmoved | {cells} | |")  # fmt: skip
    m, values = got["prefill_tokens"], spread["prefill"]
    cells = " / ".join(_diff(v, m) for v in (min(values), fmean(values), max(values)))
    rows.append(f"| {arm} prefilled tokens, jittered | {m:,.0f} | "
                f"{_diff(pred['prefill_tokens'], m)} unmoved | {cells} | |")  # fmt: skip
    return rows


def _diff(predicted: float, actual: float) -> str:
    if actual == 0:
        return "-" if predicted == 0 else "n/a"
    return f"{(predicted - actual) / actual:+.0%}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--results", type=Path, default=REPO / "out" / "three-arms")
    own.add_argument("--request-s", type=float, help="instead of each arm's mean latency")
    own.add_argument("--hold-s", type=float, help="instead of each arm's busy time per request")
    own.add_argument("--chunk-tokens", type=int, default=256)
    own.add_argument("--json", type=Path)
    own.add_argument(
        "--align",
        action="store_true",
        help="simulate only as many requests as the server's counters cover (its finished and "
        "running requests at the end), instead of the whole duration",
    )
    own.add_argument(
        "--measured-times",
        action="store_true",
        help="give each request the arm's own times (its requests.csv: looked up at its first "
        "token less the arm's mean prefill time, stored at its first token, ended at its end) "
        "instead of the planner's closed-loop times, to tell the cache model from the time model",
    )
    own.add_argument(
        "--latency",
        choices=("steps", "blocks", "throughput", "constant"),
        default="steps",
        help="steps: vLLM's engine steps, their two costs calibrated to the arm's prefill and "
        "decode times (atom_tier/plan/steps.py); "
        "blocks / throughput: each request's own time from a server model whose rates "
        "are the arm's (its metrics-end.txt), admitted when the device blocks allow it or at "
        "the arm's measured throughput (atom_tier/plan/latency.py); constant: every request "
        "takes the arm's mean latency (--request-s) and holds its blocks --hold-s",
    )
    own.add_argument("--overhead-s", type=float, default=0.0, help="time model: per request")
    own.add_argument("--prefill-tok-s", type=float, help="time model: instead of the arm's")
    own.add_argument("--decode-s", type=float, help="time model: per output token, instead")
    own.add_argument("--load-tok-s", type=float, help="time model: instead of the arm's")
    own.add_argument("--running", type=float, help="throughput admission: instead of the arm's")
    own.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="with --measured-times: move each send by a uniform draw in +-JITTER x its "
        "measured latency (e.g. 0.05), --seeds times, and print how far the hits move",
    )
    own.add_argument("--seeds", type=int, default=5, help="draws for --jitter")
    mine, rest = own.parse_known_args(argv)
    if mine.jitter and not mine.measured_times:
        raise SystemExit("--jitter moves the arm's measured send times: add --measured-times")
    opts = arm_args(rest)
    opts.chunk_tokens = mine.chunk_tokens
    traces = load_traces(opts.traces, limit=opts.limit_traces, seed=opts.seed)
    print(f"machine: {machine()} ({platform.python_version()})")
    rows, document = [], {}
    for arm in "ABCS":  # S: B with the sticky DRAM policy
        got = measured(mine.results / f"arm-{arm}" / "results")
        if got is None:
            continue
        times = server_times(mine.results / f"arm-{arm}" / METRICS_END)
        got["server"] = times
        request_s = got["mean_latency_s"] if mine.request_s is None else mine.request_s
        hold_s = mine.hold_s
        if hold_s is None:
            hold_s = times["running_s"] if times is not None else request_s
        aligned = int(times["admitted"]) if times is not None and mine.align else None
        sent = mine.results / f"arm-{arm}" / "results" / "requests.csv"
        metrics_path = mine.results / f"arm-{arm}" / METRICS_END
        server, steps = None, None
        if mine.latency == "steps" and not mine.measured_times:
            if not metrics_path.is_file():
                raise SystemExit(f"{metrics_path}: missing; the time model reads its rates")
            steps = step_targets_from_metrics(
                metrics_path.read_text(), kv_bytes_per_token=kv_bytes_per_token(opts)
            )
        elif mine.latency != "constant" and not mine.measured_times:
            if not metrics_path.is_file():
                raise SystemExit(f"{metrics_path}: missing; the time model reads its rates")
            server = server_model_from_metrics(
                metrics_path.read_text(),
                kv_bytes_per_token=kv_bytes_per_token(opts),
                elapsed_s=got["elapsed_s"],
                admission=mine.latency,
                overhead_s=mine.overhead_s,
            )
            given = {
                "prefill_tokens_per_s": mine.prefill_tok_s,
                "decode_s_per_token": mine.decode_s,
                "load_tokens_per_s": mine.load_tok_s,
                "running": mine.running,
            }
            server = dataclasses.replace(
                server, **{k: v for k, v in given.items() if v is not None}
            )
        prefill_s = times["prefill_s"] if times is not None else 0.0
        pred = predict(
            opts, traces.sessions, arm, request_s, hold_s, aligned,
            sent if mine.measured_times else None, server, steps, prefill_s=prefill_s,
        )  # fmt: skip
        document[arm] = {"measured": got, "predicted": pred}
        if mine.jitter:
            spread = jittered(opts, traces.sessions, arm, sent, mine.jitter, mine.seeds, prefill_s)
            document[arm]["jitter"] = spread
            rows.extend(jitter_rows(arm, got, pred, spread, mine.jitter))
        if steps is not None:
            rows.append(f"| **{arm}** | time model: {pred['describe']}; calibrated in "
                        f"{pred['calibration_rounds']} rounds | | | |")  # fmt: skip
            rows.append(f"| {arm} mean prefill s / decode ms per token | {steps.prefill_s:.3f} / "
                        f"{steps.decode_s * 1000:.1f} | {pred['mean_prefill_s']:.3f} / "
                        f"{pred['decode_s_per_token'] * 1000:.1f} | | |")  # fmt: skip
            queue_m = f"{times['queue_s']:.2f}" if times is not None else "?"
            latency = pred["mean_latency_s"]
            rows.append(f"| {arm} mean latency / queue s | {got['mean_latency_s']:.2f} / "
                        f"{queue_m} | {latency:.2f} / {pred['mean_queue_s']:.2f} | "
                        f"{_diff(latency, got['mean_latency_s'])} | |")  # fmt: skip
        elif server is not None:
            document[arm]["server_model"] = dataclasses.asdict(server)
            rows.append(f"| **{arm}** | time model: {server.describe()} | | | |")
            queue_m = f"{times['queue_s']:.2f}" if times is not None else "?"
            latency = pred["mean_latency_s"]
            rows.append(f"| {arm} mean latency / queue s | {got['mean_latency_s']:.2f} / "
                        f"{queue_m} | {latency:.2f} / {pred['mean_queue_s']:.2f} | "
                        f"{_diff(latency, got['mean_latency_s'])} | |")  # fmt: skip
        elif mine.measured_times:
            rows.append(f"| **{arm}** | the arm's own times: looked up at its first token less "
                        f"the mean prefill time {prefill_s:.3f} s, stored at its first token, "
                        f"ended at its end | | | |")  # fmt: skip
        else:
            held = (
                "server's running time" if times is not None and mine.hold_s is None
                else "given" if mine.hold_s is not None else "= request time: no server metrics"
            )  # fmt: skip
            rows.append(f"| **{arm}** | request {request_s:.2f} s (mean latency), hold "
                        f"{hold_s:.2f} s ({held}) | | | |")  # fmt: skip
        rows.append(f"| {arm} requests | {got['completed']:,} | {pred['requests']:,} | "
                    f"{_diff(pred['requests'], got['completed'])} | |")  # fmt: skip
        for _, source in TIERS:
            if (source != "device" and arm == "A") or (source == "disk" and arm in "BS"):
                continue
            p, m = pred["hit_tokens"][source], got["hit_tokens"][source]
            ok = "" if arm == "A" or m == 0 else ("yes" if abs(p - m) <= GOAL * m else "no")
            cells = f"{m:,.0f} | {p:,.0f} | {_diff(p, m)} | {ok}"
            rows.append(f"| {arm} hit tokens: {source} | {cells} |")
        p, m = pred["prefill_tokens"], got["prefill_tokens"]
        rows.append(f"| {arm} prefilled tokens | {m:,.0f} | {p:,.0f} | {_diff(p, m)} | |")
        mt = sum(got["hit_tokens"].values()) + m
        pt = pred["prompt_tokens"]
        rows.append(f"| {arm} prompt tokens | {mt:,.0f} | {pt:,.0f} | {_diff(pt, mt)} | |")
        rows.append(f"| {arm} hit rate | {1 - m / mt:.1%} | {1 - p / pt:.1%} | | |")
    print("| | measured | predicted | predicted vs measured | within ±15% |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    if mine.json is not None:
        mine.json.parent.mkdir(parents=True, exist_ok=True)
        mine.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
