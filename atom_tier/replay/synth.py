"""Synthetic agentic traces in the kv-cache-tester format, for tests and the demo.

The real traces are never copied into the project; these have the same fields and the shape
their README reports: each turn usually extends the previous block list by a few new blocks
(a median of 11 per turn), sometimes the context is compacted (a new list keeping only the
system/tool prefix), think times are long-tailed (median about 10 s), and some traces hold
sub-agents whose requests restart at t = 0 and use new ids from the parent's id space.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atom_tier.replay.traces import ReplayInputError

BLOCK_SIZE = 64
MODEL = "synthetic-agent"


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; token counts are trace tokens (before any replay scaling)."""

    count: int = 8
    seed: int = 0
    requests: int = 12
    context_tokens: int = 20_000
    new_blocks: int = 11
    think_median: float = 10.0
    output_median: int = 216
    compaction_rate: float = 0.05
    subagent_rate: float = 0.3
    system_tokens: int = 2_900
    tool_tokens: int = 12_000
    gzip: bool = True

    def validate(self) -> None:
        for name in ("count", "requests", "context_tokens", "new_blocks", "output_median"):
            if getattr(self, name) < 1:
                raise ReplayInputError(f"synthetic traces: {name} must be at least 1")
        for name in ("compaction_rate", "subagent_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ReplayInputError(f"synthetic traces: {name} must be within [0, 1]")
        if self.think_median < 0:
            raise ReplayInputError("synthetic traces: think_median must not be negative")


class _IdCounter:
    """Block ids of one trace: local scope, starting at 1, shared with its sub-agents."""

    def __init__(self) -> None:
        self.next_id = 1

    def take(self, count: int) -> list[int]:
        ids = list(range(self.next_id, self.next_id + count))
        self.next_id += count
        return ids


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


def _requests(
    spec: SynthSpec, rng: random.Random, ids: _IdCounter, count: int, start_tokens: int
) -> list[dict[str, Any]]:
    """``count`` requests of one conversation, each extending (or compacting) the last."""
    prefix_blocks = max(1, (spec.system_tokens + spec.tool_tokens) // BLOCK_SIZE)
    blocks = ids.take(max(prefix_blocks, start_tokens // BLOCK_SIZE))
    shared_prefix = blocks[:prefix_blocks]
    out: list[dict[str, Any]] = []
    t = 0.0
    for index in range(count):
        if index > 0:
            if rng.random() < spec.compaction_rate:
                keep = max(1, len(blocks) // 4 - prefix_blocks)
                blocks = shared_prefix + ids.take(keep)
            else:
                grow = max(1, round(_lognormal(rng, spec.new_blocks, 0.8)))
                blocks = blocks + ids.take(grow)
        output = max(1, round(_lognormal(rng, spec.output_median, 1.0)))
        api_time = round(0.5 + output / 60.0, 2)
        think = 0.0 if index == 0 else round(_lognormal(rng, spec.think_median, 1.2), 1)
        t = 0.0 if index == 0 else t + think
        out.append(
            {
                "t": round(t, 3),
                "type": "n",
                "model": MODEL,
                "in": len(blocks) * BLOCK_SIZE + rng.randrange(BLOCK_SIZE),
                "out": output,
                "hash_ids": list(blocks),
                "input_types": ["text"] if index == 0 else ["tool_result"],
                "output_types": ["text", "tool_use"],
                "stop": "tool_use" if index + 1 < count else "end_turn",
                "api_time": api_time,
                "think_time": think,
            }
        )
        t += api_time
    return out


def _totals(requests: list[dict[str, Any]]) -> dict[str, Any]:
    parent = [r for r in requests if r["type"] != "subagent"]
    subs = [q for r in requests if r["type"] == "subagent" for q in r["requests"]]
    parent_in = sum(r["in"] for r in parent)
    parent_out = sum(r["out"] for r in parent)
    sub_in = sum(r["in"] for r in subs)
    sub_out = sum(r["out"] for r in subs)
    return {
        "parent_tokens": {"input": parent_in, "output": parent_out},
        "subagent_tokens": {"input": sub_in, "output": sub_out},
        "combined_tokens": {"input": parent_in + sub_in, "output": parent_out + sub_out},
        "subagent_count": len(requests) - len(parent),
    }


def synth_trace(spec: SynthSpec, index: int) -> dict[str, Any]:
    """Trace number ``index`` of ``spec`` (the same every time for the same spec)."""
    rng = random.Random(f"{spec.seed}|{index}")
    ids = _IdCounter()
    count = max(1, round(_lognormal(rng, spec.requests, 0.5)))
    start = max(BLOCK_SIZE, round(_lognormal(rng, spec.context_tokens, 0.4)))
    requests = _requests(spec, rng, ids, count, start)
    if count > 1 and rng.random() < spec.subagent_rate:
        position = rng.randrange(1, count)
        sub_count = rng.randint(2, 6)
        sub_requests = _requests(spec, rng, ids, sub_count, start // 2)
        requests.insert(
            position,
            {
                "t": requests[position - 1]["t"] + 1.0,
                "type": "subagent",
                "agent_id": "agent_001",
                "subagent_type": "Explore",
                "status": "completed",
                "models": [MODEL],
                "tool_tokens": spec.tool_tokens // 2,
                "system_tokens": spec.system_tokens // 3,
                "requests": sub_requests,
            },
        )
    return {
        "id": f"synth_{index:04d}",
        "models": [MODEL],
        "block_size": BLOCK_SIZE,
        "hash_id_scope": "local",
        "tool_tokens": spec.tool_tokens,
        "system_tokens": spec.system_tokens,
        "requests": requests,
        "totals": _totals(requests),
    }


def write_traces(folder: Path, spec: SynthSpec) -> list[Path]:
    """Write ``spec.count`` traces into ``folder`` (created); returns the files written."""
    spec.validate()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReplayInputError(f"cannot create trace folder {folder}: {error}") from None
    written: list[Path] = []
    for index in range(1, spec.count + 1):
        trace = synth_trace(spec, index)
        payload = json.dumps(trace, separators=(",", ":")).encode()
        suffix = ".json.gz" if spec.gzip else ".json"
        path = folder / f"{trace['id']}{suffix}"
        try:
            # mtime=0: the same spec gives byte-identical files.
            path.write_bytes(gzip.compress(payload, mtime=0) if spec.gzip else payload)
        except OSError as error:
            raise ReplayInputError(f"cannot write trace file {path}: {error}") from None
        written.append(path)
    return written
