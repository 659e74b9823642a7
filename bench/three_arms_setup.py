"""The model and the reload probe of bench/three_arms.py.

The tiny test model (2 layers, hidden 128) recomputes a ~3K-token prompt on this CPU in about
the time reloading its KV takes, so no tier could beat recomputing with it. Real models spend
far more compute per byte of KV; the bench model (a random Qwen3 with the test tokenizer, 4
layers and hidden 384 by default: ~13 MFLOP per token for 2 KB of KV) puts prefill in that
regime on a 2-core CPU. The probe measures, per arm, one cold prompt and the same prompt after
it was pushed out of the KV pool: reloaded from a tier, or recomputed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import httpx

from atom_tier.devtools.tiny_model import build_tiny_model


def build_bench_model(out_dir: Path, *, hidden: int, layers: int) -> Path:
    """A random Qwen3 of ``layers`` × ``hidden`` with the test model's tokenizer (cached)."""
    marker = out_dir / "bench-model.json"
    wanted = {"hidden": hidden, "layers": layers, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return out_dir
    import torch
    from transformers import AutoConfig, Qwen3ForCausalLM

    tiny = build_tiny_model(out_dir.parent / "tiny-model")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(tiny))
    heads = max(2, hidden // 64)
    config.update(
        {"hidden_size": hidden, "intermediate_size": hidden * 8 // 3, "num_hidden_layers": layers,
         "num_attention_heads": heads, "num_key_value_heads": 2, "head_dim": 64,
         "layer_types": ["full_attention"] * layers}
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):  # fmt: skip
        if (tiny / name).exists():
            shutil.copy(tiny / name, out_dir / name)
    marker.write_text(json.dumps(wanted))
    return out_dir


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
