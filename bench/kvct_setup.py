"""Inputs of bench/kvct_compare.py: scaled trace copies both clients read, and the bench model
with a tokenizer that kv-cache-tester's text makes sense to.

kv-cache-tester's trace_replay_tester.py (`/work/shared/kv-cache-tester`, not part of this
project; nothing of it is copied here) has no token scale and reads plain ``*.json`` only, so
the traces are scaled once into a scratch folder and both clients replay those files at scale
1: every token count (input, output, block size, tool and system tokens) × the scale, outputs
also capped, block ids and times unchanged. It also sends English-like text through
``/v1/chat/completions``, where the bench model's word-level tokenizer would map nearly every
word to one unknown token (every prompt the same tokens); a byte-level BPE trained on its
vocabulary (read from its ``vocabulary.py`` at run time) gives real token counts, and the bench
model's embedding table is resized to it: same layers, same prefill cost per token.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import string
from pathlib import Path
from typing import Any

from atom_tier.devtools.tiny_model import SPECIAL_TOKENS, fast_tokenizer
from atom_tier.replay.traces import pick_files, read_trace_file, trace_files

MARKER = "atom-tier-kvct-bpe.json"


def _scaled(entries: list[dict[str, Any]], scale: float, max_output: int) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        entry = dict(entry)
        if entry.get("type") == "subagent":
            entry["requests"] = _scaled(entry.get("requests", []), scale, max_output)
        else:
            entry["in"] = max(1, round(entry["in"] * scale))
            entry["out"] = min(max_output, max(1, round(entry["out"] * scale)))
        for key in ("tool_tokens", "system_tokens"):
            if key in entry:
                entry[key] = round(entry[key] * scale)
        out.append(entry)
    return out


def has_subagent(data: dict[str, Any]) -> bool:
    return any(r.get("type") == "subagent" for r in data.get("requests", []))


def write_scaled_traces(
    source: Path, out_dir: Path, *, limit: int, seed: int, scale: float, max_output: int
) -> list[str]:
    """``limit`` traces without sub-agents, drawn with ``seed``, scaled into ``out_dir``
    (plain JSON); their ids. Without sub-agents both clients hold the same session list, and
    both shuffle a list sorted by id with ``random.Random(seed)``: the same order."""
    candidates = [p for p in trace_files(source) if not has_subagent(read_trace_file(p))]
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    ids = []
    for path in pick_files(candidates, limit, seed):
        data = read_trace_file(path)
        data["block_size"] = max(1, round(data.get("block_size", 64) * scale))
        for key in ("tool_tokens", "system_tokens"):
            data[key] = round(data.get(key, 0) * scale)
        data["requests"] = _scaled(data["requests"], scale, max_output)
        name = path.name.removesuffix(".gz")
        (out_dir / name).write_text(json.dumps(data))
        ids.append(str(data.get("id", name)))
    return ids


def _training_text(kvct_dir: Path) -> list[str]:
    """kv-cache-tester's own words and templates (imported from its folder), plus printable
    ASCII so code-like tool output tokenizes too."""
    spec = importlib.util.spec_from_file_location("kvct_vocabulary", kvct_dir / "vocabulary.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(kvct_dir / "vocabulary.py")
    vocab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vocab)
    words: list[str] = [*vocab.CONNECTORS, *vocab.ACTION_VERBS, *vocab.ADJECTIVES]
    for topic in vocab.TOPICS.values():
        words += [*topic.get("nouns", []), *topic.get("verbs", [])]
    rng = random.Random(0)
    lines = []
    for template in vocab.GENERIC_TEMPLATES * 40:
        for slot in ("[noun]", "[verb]", "[adj]", "[conn]"):
            while slot in template:
                template = template.replace(slot, rng.choice(words), 1)
        lines.append(template)
    return [*lines, " ".join(words), string.printable]


def build_bpe_model(bench_model: Path, out_dir: Path, kvct_dir: Path, vocab: int = 8192) -> Path:
    """The bench model with a byte-level BPE trained on kv-cache-tester's vocabulary (cached)."""
    wanted = {"source": str(bench_model.resolve()), "vocab": vocab, "format": 1}
    marker = out_dir / MARKER
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return out_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_training_text(kvct_dir), trainer)
    fast = fast_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(bench_model), dtype=torch.bfloat16)
    model.resize_token_embeddings(len(fast))
    model.config.eos_token_id = fast.eos_token_id
    model.config.pad_token_id = fast.pad_token_id
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    fast.save_pretrained(str(out_dir))
    marker.write_text(json.dumps(wanted))
    return out_dir
