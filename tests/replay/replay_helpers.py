"""Helpers for the replay tests: trace files written by hand in the kv-cache-tester format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


def write_trace(path: Path, data: Any) -> Path:
    """Write one trace file, gzip-compressed when the name ends in .gz."""
    raw = json.dumps(data).encode()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def request(
    hash_ids: list[int],
    *,
    t: float = 0.0,
    think: float | None = 0.0,
    extra_tokens: int = 10,
    out: int = 100,
) -> dict[str, Any]:
    """One request entry in the trace format (64-token blocks)."""
    entry: dict[str, Any] = {
        "t": t,
        "type": "n",
        "model": "m",
        "in": len(hash_ids) * 64 + extra_tokens,
        "out": out,
        "hash_ids": hash_ids,
        "input_types": ["text"],
        "output_types": ["text"],
        "stop": "end_turn",
        "api_time": 1.0,
    }
    if think is not None:
        entry["think_time"] = think
    return entry
