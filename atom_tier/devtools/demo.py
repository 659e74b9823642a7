"""`make demo`: the whole stack on CPU vLLM, on a tiny model generated here.

Starts a real vLLM OpenAI server with atom-tier installed (and its opt-in CPU development
platform), sends a request, prints the answer, what atom-tier logged inside the server, and the
doctor report, then stops the server and checks that nothing of it is left running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from atom_tier.devtools.cpu_server import CpuVllmServer, ServerStartError
from atom_tier.devtools.tiny_model import build_tiny_model, words

DEMO_ENV = {"ATOM_TIER_CPU_PLATFORM": "1", "PYTHONHASHSEED": "0"}


def atom_tier_log_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "atom-tier" in line or "atom_tier" in line]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_demo(workdir: Path) -> int:
    print(f"[demo] building the tiny model in {workdir / 'tiny-model'}")
    model_dir = build_tiny_model(workdir / "tiny-model")
    print("[demo] starting vLLM (CPU) with atom-tier; this takes about a minute...")
    started = time.monotonic()
    server = CpuVllmServer(model_dir, workdir=workdir / "logs", env=DEMO_ENV)
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
    return 1 if leftover else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    sys.exit(run_demo(args.workdir))


if __name__ == "__main__":
    main()
