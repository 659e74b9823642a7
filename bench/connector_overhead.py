"""Overhead of the tiered connector at base load: TTFT with AtomTierConnector on vs off.

Two real CPU vLLM servers on the same tiny model run side by side, one with the connector and
one without; the same never-repeated prompts (no prefix reuse, no eviction pressure: the
connector can only cost here) go to both, alternating which server is asked first. TTFT is the
time to the first streamed token. Prints the machine, per-arm statistics and the ratio.

    .venv/bin/python bench/connector_overhead.py [--prompts 40] [--tokens 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.tiny_model import build_tiny_model

CONNECTOR = json.dumps({"kv_connector": "AtomTierConnector", "kv_role": "kv_both"})


def ttft_seconds(client: httpx.Client, server: CpuVllmServer, prompt: list[int]) -> float:
    payload = {
        "model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True,
    }  # fmt: skip
    started = time.perf_counter()
    with client.stream("POST", server.base_url + "/v1/completions", json=payload) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data: ") and '"text"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token streamed")


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="atom-tier-overhead-"))
    model = build_tiny_model(work / "model")
    env = {"PYTHONHASHSEED": "0", "ATOM_TIER_DRAM_GB": "1"}
    servers = {
        "off": CpuVllmServer(model, workdir=work, env=env, name="off"),
        "on": CpuVllmServer(
            model, workdir=work, env=env, args=["--kv-transfer-config", CONNECTOR], name="on"
        ),
    }
    rng = random.Random(0)
    prompts = [
        [rng.randrange(10, 500) for _ in range(args.tokens)]
        for _ in range(args.warmup + args.prompts)
    ]
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for server in servers.values():
            server.start()
        with httpx.Client(timeout=300) as client:
            for index, prompt in enumerate(prompts):
                order = ["off", "on"] if index % 2 == 0 else ["on", "off"]
                for arm in order:
                    seconds = ttft_seconds(client, servers[arm], prompt)
                    if index >= args.warmup:
                        times[arm].append(seconds)
    finally:
        for server in servers.values():
            server.stop()

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{args.prompts} distinct {args.tokens}-token prompts, {args.warmup} warm-up, "
          "alternating order; TTFT to the first streamed token")  # fmt: skip
    print("| connector | mean ms | median ms | p90 ms |")
    print("|---|---|---|---|")
    for arm, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"| {arm} | {statistics.mean(values) * 1e3:.1f} | "
              f"{statistics.median(values) * 1e3:.1f} | {p90 * 1e3:.1f} |")  # fmt: skip
    ratio = statistics.mean(times["on"]) / statistics.mean(times["off"])
    median_ratio = statistics.median(times["on"]) / statistics.median(times["off"])
    print(f"mean TTFT on/off: {ratio:.3f} (overhead {100 * (ratio - 1):+.1f}%); "
          f"median on/off: {median_ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
