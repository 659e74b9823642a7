"""`make demo`: the whole stack on CPU vLLM, on a tiny model generated here.

Starts a real vLLM OpenAI server with atom-tier installed and its opt-in CPU development
platform (which, like the ROCm platform, applies atom-tier's policy and turns the tiered KV
connector on with no `--kv-transfer-config`). The device KV cache is shrunk to 12 blocks so that
a conversation's prefix falls out of it; the demo then shows that prefix reloaded from the DRAM
tier instead of being computed again. Then it replays a few synthetic agentic traces against
the server with `atom-tier replay` and prints the replay's table and where its CSVs and plots
are. It prints the answers, what atom-tier logged inside the server, the doctor report, then
stops the server and checks nothing of it is left.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from atom_tier.devtools.cpu_server import CpuVllmServer, ServerStartError
from atom_tier.devtools.tiny_model import build_tiny_model, words

DEMO_ENV = {"ATOM_TIER_CPU_PLATFORM": "1", "PYTHONHASHSEED": "0", "ATOM_TIER_DRAM_GB": "0.25"}
# 12 device blocks of 128 tokens: four 600-token prompts push an earlier one out.
DEMO_ARGS = ["--max-model-len", "1024", "--num-gpu-blocks-override", "12"]
HIT_LINE = re.compile(r"atom-tier hit tokens: (\d+) \(dram (\d+), nvme (\d+)\)")


def token_prompt(seed: int, count: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(count)]


def timed_completion(server: CpuVllmServer, prompt: list[int]) -> tuple[str, float]:
    started = time.monotonic()
    reply = server.complete(prompt, max_tokens=8)
    return reply["choices"][0]["text"], time.monotonic() - started


def show_tier_reload(server: CpuVllmServer) -> bool:
    """A prefix evicted from the device cache comes back from DRAM; True when it did."""
    conversation = token_prompt(1)
    cold_text, cold_s = timed_completion(server, conversation)
    print(f"[demo] 600-token prompt, cold:            {cold_s * 1000:6.0f} ms  -> {cold_text!r}")
    for seed in range(100, 104):
        server.complete(token_prompt(seed), max_tokens=8)
    print("[demo] 4 other prompts pushed it out of vLLM's 12-block device cache")
    hits_before = server.metric_sum("vllm:prompt_tokens_cached_by_source", source="host")
    warm_text, warm_s = timed_completion(server, conversation)
    from_dram = server.metric_sum("vllm:prompt_tokens_cached_by_source", source="host")
    print(f"[demo] same prompt again, from DRAM tier: {warm_s * 1000:6.0f} ms  -> {warm_text!r}")
    print(f"[demo] tokens loaded from the DRAM tier: {from_dram - hits_before:.0f}")
    hit_lines = HIT_LINE.findall(server.log_text())
    if hit_lines:
        total, dram, nvme = hit_lines[-1]
        print(f"[demo] server log: atom-tier hit tokens {total} (dram {dram}, nvme {nvme})")
    same = warm_text == cold_text
    print(f"[demo] greedy answer identical to the cold run: {same}")
    return same and from_dram > hits_before


def atom_tier_log_lines(log: str) -> list[str]:
    """atom-tier's start-up lines: changes made, the feature block, plugin and tier set-up."""
    wanted = ("atom-tier", "atom_tier", "[feature_report.py")
    return [
        line for line in log.splitlines() if any(w in line for w in wanted) and "Reqid:" not in line
    ]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def replay_traces(server: CpuVllmServer, workdir: Path, seconds: float) -> int:
    """`atom-tier gen-traces` then `atom-tier replay` against the demo server."""
    from atom_tier.cli import main as atom_tier

    traces, results = workdir / "traces", workdir / "replay"
    print(f"[demo] writing synthetic agentic traces to {traces}")
    # Short conversations (6K-token first turns, 1/16 scale) fit the demo's 1024-token model.
    atom_tier(
        ["gen-traces", str(traces), "--count", "6", "--seed", "1", "--context-tokens", "6000"]
    )
    print(f"[demo] replaying them for {seconds:.0f} s (contexts scaled 1/16 to fit the model)")
    code = atom_tier(
        [
            "replay", str(traces), "--url", server.base_url, "--out", str(results),
            "--duration", str(seconds), "--token-scale", "0.0625", "--max-context", "960",
            "--think-scale", "0.1", "--max-think", "2", "--start-users", "2",
            "--max-users", "3", "--max-output-tokens", "8", "--seed", "1", "--label", "demo",
            "--recycle",
        ]
    )  # fmt: skip
    print(f"[demo] replay exit status {code}; CSVs and plots in {results}")
    return code


def run_demo(workdir: Path, replay_seconds: float = 90) -> int:
    print(f"[demo] building the tiny model in {workdir / 'tiny-model'}")
    model_dir = build_tiny_model(workdir / "tiny-model")
    print("[demo] starting vLLM (CPU) with atom-tier; this takes about a minute...")
    started = time.monotonic()
    server = CpuVllmServer(model_dir, workdir=workdir / "logs", args=DEMO_ARGS, env=DEMO_ENV)
    try:
        server.start()
    except ServerStartError as exc:
        print(f"[demo] the server did not start:\n{exc}", file=sys.stderr)
        return 1
    try:
        print(f"[demo] server up at {server.base_url} in {time.monotonic() - started:.0f} s")
        prompt = words(24)
        reply = server.complete(prompt, max_tokens=12)
        print(f"[demo] prompt : {prompt}")
        print(f"[demo] answer : {reply['choices'][0]['text'].strip()}")
        print(f"[demo] usage  : {reply['usage']}")
        reloaded = show_tier_reload(server)
        replayed = replay_traces(server, workdir, replay_seconds) == 0
        print("[demo] atom-tier inside the server:")
        for line in atom_tier_log_lines(server.log_text()):
            print("    " + line)
        print("[demo] doctor report (same environment):")
        env = {**os.environ, **DEMO_ENV}
        doctor = subprocess.run(
            [sys.executable, "-m", "atom_tier.cli", "doctor"], env=env, check=False
        )
        print(f"[demo] doctor exit status {doctor.returncode}")
    finally:
        code = server.stop()
    leftover = group_alive(server.pid)
    left = "yes" if leftover else "none"
    print(f"[demo] server stopped (exit status {code}); processes left: {left}")
    return 1 if leftover or not reloaded or not replayed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    parser.add_argument("--replay-seconds", type=float, default=90)
    args = parser.parse_args()
    sys.exit(run_demo(args.workdir, args.replay_seconds))


if __name__ == "__main__":
    main()
