"""The planner against the three arms: predicted vs measured hit tokens per tier and prefill.

Runs ``atom-tier plan``'s simulator on exactly the configuration of ``bench/three_arms.py``
(its defaults, or the same flags: traces, token scale, think times, users, duration, KV pool,
DRAM and NVMe sizes) for each arm whose results are in ``--results`` (``arm-X/results``, as
three_arms.py leaves them), with each request's time from a time model of one server
(``--latency blocks``, the default, or ``throughput``; atom_tier/plan/latency.py) whose rates
are the arm's (``arm-X/metrics-end.txt``: vLLM's prefill, decode and inference times, computed
and generated tokens, the connector's loads), each flag-overridable and printed with the
result; or, with ``--latency constant``, every request taking the arm's mean latency (how
users interleave) and holding its device blocks for vLLM's mean inference time.

    PYTHONPATH=. .venv/bin/python bench/plan_vs_arms.py [three_arms.py flags] \
        [--results out/three-arms] [--latency blocks|throughput|constant] [--align] \
        [--measured-times] [--json out/plan-vs-arms.json]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import platform
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

from three_arms import METRICS_END, REPO
from three_arms import parse_args as arm_args
from three_arms_setup import machine

from atom_tier.plan.latency import ServerModel, TimedSimulation, server_model_from_metrics
from atom_tier.plan.simulator import (
    DEVICE,
    DRAM,
    NVME,
    HierarchySpec,
    TierSpec,
    device_hits,
    simulate,
)
from atom_tier.plan.workload import Workload, WorkloadOptions, build_workload
from atom_tier.replay.metrics import parse_prometheus
from atom_tier.replay.traces import load_traces
from atom_tier.sizing import GIB

BLOCK_TOKENS = 128  # vLLM's KV block on CPU
TIERS = ((DEVICE, "device"), (DRAM, "host"), (NVME, "disk"))  # planner name, vLLM source
GOAL = 0.15


def server_times(path: Path) -> dict[str, float] | None:
    """Mean queue and running (inference) seconds per request from the server's /metrics at
    the end of the replay (three_arms.py's METRICS_END), or None without that file."""
    if not path.is_file():
        return None
    samples = parse_prometheus(path.read_text())

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == name)

    count = total("vllm:request_inference_time_seconds_count")
    if not count:
        return None
    return {
        "queue_s": total("vllm:request_queue_time_seconds_sum") / count,
        "running_s": total("vllm:request_inference_time_seconds_sum") / count,
        # Requests the hit counters cover: finished, and running at the end (counted when
        # scheduled); the waiting ones are not counted yet.
        "admitted": count + total("vllm:num_requests_running"),
        "requests": count,
    }


def measured(results: Path) -> dict[str, Any] | None:
    summary_path, requests_path = results / "summary.json", results / "requests.csv"
    if not summary_path.is_file() or not requests_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    with requests_path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["ok"] == "1"]
    latency = fmean(float(r["latency_s"]) for r in rows)
    return {
        "completed": summary["requests_completed"],
        "elapsed_s": summary["elapsed_s"],
        "hit_tokens": {s: summary["hit_tokens"].get(s, 0.0) for _, s in TIERS},
        "prefill_tokens": summary["computed_tokens"],
        "mean_latency_s": latency,
        "input_tokens": sum(int(r["input_tokens"]) for r in rows),
    }


def at_measured_times(workload: Workload, requests_csv: Path) -> Workload:
    """The requests the arm completed, sent when the arm sent them (``start_s`` of its
    requests.csv) instead of at the planner's closed-loop times: what is left of the
    difference is then the cache model's, not the time model's."""
    with requests_csv.open() as handle:
        sent = {
            (row["session"], int(row["cycle"]), int(row["request"])): float(row["start_s"])
            for row in csv.DictReader(handle)
            if row["ok"] == "1"
        }
    timed = sorted(
        (
            dataclasses.replace(r, time=sent[key])
            for r in workload.requests
            if (key := (r.session_id, r.cycle, r.index)) in sent
        ),
        key=lambda r: r.time,
    )
    if len(timed) != len(sent):
        raise SystemExit(f"{requests_csv}: {len(sent) - len(timed)} requests not in the plan")
    requests = tuple(dataclasses.replace(r, serial=i) for i, r in enumerate(timed))
    return dataclasses.replace(workload, requests=requests)


def kv_bytes_per_token(opts: argparse.Namespace) -> int:
    return opts.layers * 2 * 64 * 2 * 2 if opts.model == "bench" else 512


def predict(
    opts: argparse.Namespace,
    sessions: Any,
    arm: str,
    request_s: float,
    hold_s: float,
    requests: int | None = None,
    measured_times: Path | None = None,
    server: ServerModel | None = None,
) -> dict[str, Any]:
    """``server``: the time model (each request's own latency); None: ``request_s`` and
    ``hold_s`` for every request."""
    options = WorkloadOptions(
        users=opts.users,
        token_scale=opts.token_scale,
        think_scale=opts.think_scale,
        max_think=opts.max_think,
        max_context=opts.max_model_len,
        max_output_tokens=opts.max_output_tokens,
        request_s=request_s,
        # With the arm's own send times, plan well past its end and keep what it sent.
        duration=opts.duration * (4 if measured_times else 1),
        max_requests=None if measured_times else requests,
        recycle=True,
        seed=opts.seed,
        warm_prefix_pct=opts.warm_prefix_pct,
    )
    chunk = opts.chunk_tokens
    per_chunk = chunk * kv_bytes_per_token(opts)
    dram = int(opts.dram_gb * GIB // per_chunk) if arm in "BC" else 0
    nvme = (TierSpec(NVME, int(opts.nvme_gb * GIB // per_chunk)),) if arm == "C" else ()
    spec = HierarchySpec(TierSpec(DRAM, dram, "lru"), nvme)
    device_chunks = opts.kv_blocks * BLOCK_TOKENS // chunk
    timed = None
    if server is not None and measured_times is None:
        timed = TimedSimulation(
            spec, device_chunks, server, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS
        )
        workload = build_workload(
            sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS,
            respond=timed.respond,
        )  # fmt: skip
        result = timed.result()
    else:
        workload = build_workload(sessions, options, chunk_tokens=chunk, block_tokens=BLOCK_TOKENS)
        if measured_times is not None:
            workload = at_measured_times(workload, measured_times)
        device = device_hits(workload, device_chunks, hold_s)
        result = simulate(workload, device, spec, hold_s)
    hits = {source: float(result.tiers[name].hit_tokens) if name in result.tiers else 0.0
            for name, source in TIERS}  # fmt: skip
    return {
        "requests": len(workload.requests),
        "prompt_tokens": result.prompt_tokens,
        "hit_tokens": hits,
        "prefill_tokens": float(result.prefill_tokens),
        "request_s": request_s if timed is None else None,
        "hold_s": hold_s if timed is None else None,
        "mean_latency_s": timed.times.mean_latency_s if timed is not None else None,
        "mean_queue_s": timed.times.mean_queue_s if timed is not None else None,
    }


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
        help="send each request when the arm sent it (its requests.csv) instead of at the "
        "planner's closed-loop times, to tell the cache model from the time model",
    )
    own.add_argument(
        "--latency",
        choices=("blocks", "throughput", "constant"),
        default="blocks",
        help="blocks / throughput: each request's own time from a server model whose rates "
        "are the arm's (its metrics-end.txt), admitted when the device blocks allow it or at "
        "the arm's measured throughput (atom_tier/plan/latency.py); constant: every request "
        "takes the arm's mean latency (--request-s) and holds its blocks --hold-s",
    )
    own.add_argument("--overhead-s", type=float, default=0.0, help="time model: per request")
    own.add_argument("--prefill-tok-s", type=float, help="time model: instead of the arm's")
    own.add_argument("--decode-s", type=float, help="time model: per output token, instead")
    own.add_argument("--load-tok-s", type=float, help="time model: instead of the arm's")
    own.add_argument("--running", type=float, help="throughput admission: instead of the arm's")
    mine, rest = own.parse_known_args(argv)
    opts = arm_args(rest)
    opts.chunk_tokens = mine.chunk_tokens
    traces = load_traces(opts.traces, limit=opts.limit_traces, seed=opts.seed)
    print(f"machine: {machine()} ({platform.python_version()})")
    rows, document = [], {}
    for arm in "ABC":
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
        server = None
        if mine.latency != "constant" and not mine.measured_times:
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
        pred = predict(
            opts, traces.sessions, arm, request_s, hold_s, aligned,
            sent if mine.measured_times else None, server,
        )  # fmt: skip
        document[arm] = {"measured": got, "predicted": pred}
        if server is not None:
            document[arm]["server_model"] = dataclasses.asdict(server)
            rows.append(f"| **{arm}** | time model: {server.describe()} | | | |")
            queue_m = f"{times['queue_s']:.2f}" if times is not None else "?"
            latency = pred["mean_latency_s"]
            rows.append(f"| {arm} mean latency / queue s | {got['mean_latency_s']:.2f} / "
                        f"{queue_m} | {latency:.2f} / {pred['mean_queue_s']:.2f} | "
                        f"{_diff(latency, got['mean_latency_s'])} | |")  # fmt: skip
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
            if (source != "device" and arm == "A") or (source == "disk" and arm == "B"):
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
