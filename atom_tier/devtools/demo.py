"""`make demo`: atom-tier's case on CPU vLLM, tiers off against tiers on, in a few minutes.

The model is the bench model (a random Qwen3 whose prefill costs far more than reloading its
KV, as with real models; the 2-layer test model recomputes about as fast as it reloads). The
device KV pool is shrunk to a few conversations' worth so that users evict each other's
prefixes. The same multi-turn agentic replay (synthetic traces whose conversations fit the
context many turns over) runs twice: on a server without tiers, then on one with atom-tier's
opt-in CPU development platform, which (like the ROCm platform) applies atom-tier's policy and
turns the DRAM tier on with no `--kv-transfer-config`. On the second server the demo first shows
one evicted prompt reloaded from the DRAM tier against computing it cold. Then `atom-tier replay
compare` prints the two runs side by side and writes the plots. The figures are written to
``demo.json`` too, which the demo test checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from atom_tier.devtools.cpu_server import CpuVllmServer, ServerStartError
from atom_tier.devtools.tiny_model import build_bench_model
from atom_tier.replay.cli import replay_against, write_results
from atom_tier.replay.compare import load_runs, markdown_table, write_report
from atom_tier.replay.report import summary
from atom_tier.replay.runner import ReplayOptions, ReplayResult
from atom_tier.replay.synth import SynthSpec, write_traces
from atom_tier.replay.traces import ReplayInputError, load_traces

MAX_LEN = 2048
# Device KV pool: 18 blocks of 128 tokens, about two conversations (vLLM wants more than
# MAX_LEN's worth: one request of MAX_LEN must fit beside a partly used block).
POOL_BLOCKS = 18
SERVER_ARGS = ["--max-model-len", str(MAX_LEN), "--num-gpu-blocks-override", str(POOL_BLOCKS)]
TIERS_ON = {"ATOM_TIER_CPU_PLATFORM": "1", "PYTHONHASHSEED": "0", "ATOM_TIER_DRAM_GB": "0.25"}
# The same platform and policy with the connector (and so every tier) off.
TIERS_OFF = {**TIERS_ON, "ATOM_TIER_CONNECTOR": "off"}
TOKEN_SCALE = 1 / 16
# The bench model's default hidden size (384) recomputes a ~1K-token first turn in ~80 ms on
# 2 cores, too little for the tiers to show beside the connector's own costs; at 768 a
# recompute costs ~4x more for the same KV bytes.
HIDDEN = 768
# Conversations of ~12 turns (median) whose first turn is ~1K tokens after scaling and which
# grow ~45 tokens a turn: most end well inside MAX_LEN, so they run all their turns.
TRACES = SynthSpec(count=10, seed=1, requests=12, context_tokens=16_000, subagent_rate=0.3)
USERS = 3
PROBE_TOKENS = 12 * 128
RESULT_JSON = "demo.json"
CONNECTOR_LINE = "[on ] kv_connector"  # the feature block's line for the tiers


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _start(model_dir: Path, workdir: Path, env: dict[str, str], name: str) -> CpuVllmServer:
    server = CpuVllmServer(model_dir, workdir=workdir, args=SERVER_ARGS, env=env, name=name)
    started = time.monotonic()
    server.start()
    _say(f"  server up in {time.monotonic() - started:.0f} s (log {server.log_path})")
    return server


def _ttft(server: CpuVllmServer, prompt: list[int]) -> tuple[float, str]:
    started = time.monotonic()
    reply = server.complete(prompt, max_tokens=1)
    return time.monotonic() - started, reply["choices"][0]["text"]


def reload_probe(server: CpuVllmServer) -> dict[str, Any]:
    """One prompt cold, then again after two others pushed it out of the device pool (a
    first prompt warms the server up, so that neither timing holds start-up costs)."""
    rng = random.Random(7)

    def prompt() -> list[int]:
        return [rng.randrange(10, 500) for _ in range(PROBE_TOKENS)]

    server.complete(prompt(), max_tokens=1)
    conversation = prompt()
    cold_s, cold_text = _ttft(server, conversation)
    for _ in range(2):
        server.complete(prompt(), max_tokens=1)
    before = server.metric_sum("vllm:prompt_tokens_cached_by_source", source="host")
    reload_s, reload_text = _ttft(server, conversation)
    loaded = server.metric_sum("vllm:prompt_tokens_cached_by_source", source="host") - before
    _say(
        f"  {PROBE_TOKENS:,}-token prompt cold {cold_s * 1000:,.0f} ms; after eviction from "
        f"the device pool, {loaded:,.0f} tokens reloaded from DRAM: {reload_s * 1000:,.0f} ms "
        f"({cold_s / reload_s:.1f}x faster), same answer: {reload_text == cold_text}"
    )
    return {
        "cold_s": cold_s,
        "reload_s": reload_s,
        "reloaded_tokens": loaded,
        "same_answer": reload_text == cold_text,
    }


def replay_arm(server: CpuVllmServer, traces: Path, out: Path, label: str, seconds: float) -> Any:
    """The demo's replay against ``server``; its summary (files in ``out``)."""
    sessions = load_traces(traces).sessions
    # No warm prefix (the replay's default shares one across conversations, as kv-cache-tester
    # does): with 3 users it stays in the small device pool, and in issue 22's run of
    # tests/server/test_demo.py tiers-off's hits on it outweighed what the tiers won.
    options = ReplayOptions(
        duration=seconds, start_users=USERS, max_users=USERS, period=10.0, think_scale=0.1,
        max_think=2.0, recycle=True, seed=1, max_context=MAX_LEN, label=label,
        warm_prefix_pct=0.0,
    )  # fmt: skip
    result: ReplayResult = asyncio.run(
        replay_against(
            server.base_url, sessions, options, token_scale=TOKEN_SCALE, max_output_tokens=8
        )
    )
    write_results(result, out)
    figures = summary(result)
    multi_turn = {r.session_id for r in result.completed if r.index > 0}
    figures["multi_turn_sessions"] = len(multi_turn)
    hits = ", ".join(f"{t} {v:,.0f}" for t, v in figures["hit_tokens"].items() if v) or "none"
    _say(
        f"  {figures['requests_completed']} requests in {seconds:.0f} s, {len(multi_turn)} "
        f"conversations past turn 1, {figures['sessions_finished']} finished; hit tokens: {hits}"
    )
    return figures


def run_arm(
    name: str, env: dict[str, str], model_dir: Path, workdir: Path, seconds: float
) -> dict[str, Any]:
    server = _start(model_dir, workdir / name / "logs", env, name)
    try:
        figures: dict[str, Any] = {}
        if name == "tiers-on":
            connector = [line for line in server.log_text().splitlines() if CONNECTOR_LINE in line]
            if connector:
                _say("  atom-tier in the server: " + connector[0].split("]", 1)[-1].strip())
            figures["probe"] = reload_probe(server)
        _say(f"  replaying agentic conversations for {seconds:.0f} s, {USERS} users")
        figures["replay"] = replay_arm(server, workdir / "traces", workdir / name, name, seconds)
    finally:
        code = server.stop()
    left = _group_alive(server.pid)
    _say(f"  server stopped (exit status {code}); processes left: {'yes' if left else 'none'}")
    figures["processes_left"] = left
    return figures


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_demo(workdir: Path, replay_seconds: float = 50) -> int:
    model_dir = build_bench_model(workdir / f"bench-model-h{HIDDEN}", hidden=HIDDEN)
    _say(
        f"model: random Qwen3, 4 layers, hidden {HIDDEN} (its prefill costs far more than "
        f"reloading its KV, as with real models); device KV pool {MAX_LEN:,} tokens"
    )
    write_traces(workdir / "traces", TRACES)
    arms: dict[str, dict[str, Any]] = {}
    for name, env, what in (
        ("tiers-off", TIERS_OFF, "vLLM's prefix cache only"),
        ("tiers-on", TIERS_ON, "atom-tier's CPU platform, DRAM tier 0.25 GB"),
    ):
        _say(f"{name}: starting vLLM (CPU), {what}; about a minute...")
        try:
            arms[name] = run_arm(name, env, model_dir, workdir, replay_seconds)
        except ServerStartError as error:
            _say(f"the server did not start:\n{error}")
            return 1
        except ReplayInputError as error:
            _say(f"the replay failed: {error}")
            return 1
    runs = load_runs([workdir / "tiers-off", workdir / "tiers-on"])
    _say("tiers off vs on (`atom-tier replay compare`; ratios against tiers off):")
    print("\n".join(markdown_table(runs)))
    files = write_report(runs, workdir / "compare")
    (workdir / RESULT_JSON).write_text(json.dumps(arms, indent=2, default=str) + "\n")
    _say("look at: " + ", ".join(str(p) for p in files[1:]))
    return 1 if any(arm["processes_left"] for arm in arms.values()) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument("--replay-seconds", type=float, default=50)
    args = parser.parse_args()
    sys.exit(run_demo(args.workdir, args.replay_seconds))


if __name__ == "__main__":
    main()
