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
    workload: Workload, requests_csv: Path, jitter: float = 0.0, seed: int = 0
) -> Workload:
    """The requests the arm completed, sent when the arm sent them (``start_s`` of its
    requests.csv) instead of at the planner's closed-loop times: what is left of the
    difference is then the cache model's, not the time model's. ``jitter``: each send time
    moved by a uniform draw in +-``jitter`` x that request's measured latency (``seed``), to
    see how much the hits depend on the exact order."""
    draw = random.Random(seed)
    with requests_csv.open() as handle:
        sent = {
            (row["session"], int(row["cycle"]), int(row["request"])): float(row["start_s"])
            + draw.uniform(-jitter, jitter) * float(row["latency_s"])
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
