"""The model (built by atom_tier.devtools.tiny_model, shared with `make demo`) and the reload
probe of bench/three_arms.py.

The tiny test model (2 layers, hidden 128) recomputes a ~3K-token prompt on this CPU in about
the time reloading its KV takes, so no tier could beat recomputing with it. Real models spend
far more compute per byte of KV; the bench model (a random Qwen3 with the test tokenizer, 4
layers and hidden 384 by default: ~13 MFLOP per token for 2 KB of KV) puts prefill in that
regime on a 2-core CPU. The probe measures, per arm, one cold prompt and the same prompt after
it was pushed out of the KV pool: reloaded from a tier, or recomputed.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import httpx

from atom_tier.devtools.tiny_model import build_bench_model

__all__ = ["build_bench_model", "machine", "model_text", "probe_reload"]


def model_text(opts: argparse.Namespace) -> str:
    if opts.model == "tiny":
        return "atom-tier's tiny random Qwen3 test model (2 layers, hidden 128, 512 B KV/token)"
    kv = opts.layers * 2 * 64 * 2 * 2
    return (
        f"random Qwen3 with the test tokenizer ({opts.layers} layers, hidden {opts.hidden}, "
        f"2 KV heads × 64, bf16: {kv:,} B of KV per token)"
    )


def probe_reload(url: str, model: str, pool_tokens: int) -> dict[str, float]:
    """Single-request TTFTs after the replay: a cold prompt of half the KV pool, then the same
    prompt after two others of its size pushed it out of the pool (but not out of a DRAM tier
    that holds three of them): reloaded from the tier, or recomputed."""
    tokens = max(64, pool_tokens // 2)

    def ttft(prompt: list[int]) -> float:
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "stream": True}
        start = time.perf_counter()
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as reply:
            next(line for line in reply.iter_lines() if line.startswith("data:"))
        return time.perf_counter() - start

    rng = random.Random(7)
    cold, again = [], []
    for _ in range(2):
        prompt = [rng.randrange(8, 500) for _ in range(tokens)]
        cold.append(ttft(prompt))
        for _ in range(2):
            ttft([rng.randrange(8, 500) for _ in range(tokens)])
        again.append(ttft(prompt))
    return {"probe_cold_s": min(cold), "probe_after_eviction_s": min(again)}


def machine() -> str:
    """CPU model, logical CPUs, RAM and OS of this machine, for benchmark reports."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{model}, {os.cpu_count()} logical CPUs, {memory:.1f} GiB RAM, {platform.platform()}"
