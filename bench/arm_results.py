"""The three arms' results as the planner comparison reads them: what each arm measured
(``arm-X/results``: summary.json, requests.csv; ``arm-X/metrics-end.txt``), and the arm's
requests at the times it sent them."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path
from statistics import fmean
from typing import Any

from atom_tier.plan.simulator import DEVICE, DRAM, NVME
from atom_tier.plan.workload import Workload
from atom_tier.replay.metrics import parse_prometheus

TIERS = ((DEVICE, "device"), (DRAM, "host"), (NVME, "disk"))  # planner name, vLLM source


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
        # Scheduled to first token, per request.
        "prefill_s": total("vllm:request_prefill_time_seconds_sum")
        / max(1.0, total("vllm:request_prefill_time_seconds_count")),
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


def at_measured_times(
    workload: Workload,
    requests_csv: Path,
    jitter: float = 0.0,
    seed: int = 0,
    prefill_s: float = 0.0,
) -> tuple[Workload, list[tuple[float, float]]]:
    """The requests the arm completed at the times the arm gave them (its requests.csv),
    instead of the planner's closed-loop times: what is left of the difference is then the
    cache model's, not the time model's. Each request is looked up at its estimated
    admission, its first token (``start_s`` + ``ttft_s``) less the arm's mean prefill time
    ``prefill_s`` (vLLM's ``request_prefill_time_seconds``), not before it was sent; it
    stores its chunks at its first token (when vLLM has computed them) and ends at
    ``start_s`` + ``latency_s``: the second list, (store time, end time) per request, in
    the workload's order. ``jitter``: each request's times moved together by a uniform draw
    in +-``jitter`` x its measured latency (``seed``), to see how much the hits depend on
    the exact order."""
    draw = random.Random(seed)
    with requests_csv.open() as handle:
        sent: dict[tuple[str, int, int], tuple[float, float, float]] = {}
        for row in csv.DictReader(handle):
            if row["ok"] != "1":
                continue
            latency = float(row["latency_s"])
            start = float(row["start_s"]) + draw.uniform(-jitter, jitter) * latency
            first = start + float(row["ttft_s"])
            key = (row["session"], int(row["cycle"]), int(row["request"]))
            sent[key] = (max(start, first - prefill_s), first, start + latency)
    timed = sorted(
        (
            (sent[key], dataclasses.replace(r, time=sent[key][0]))
            for r in workload.requests
            if (key := (r.session_id, r.cycle, r.index)) in sent
        ),
        key=lambda pair: pair[0][0],
    )
    if len(timed) != len(sent):
        raise SystemExit(f"{requests_csv}: {len(sent) - len(timed)} requests not in the plan")
    requests = tuple(dataclasses.replace(r, serial=i) for i, (_, r) in enumerate(timed))
    times = [(first, end) for (_, first, end), _ in timed]
    return dataclasses.replace(workload, requests=requests), times
