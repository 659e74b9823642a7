"""The planner's cache model against a real vLLM server, at the server's own times.

A CPU server with a small KV pool and a small DRAM tier replays generated traces while
``bench/dram_trace.py`` logs what its DRAM tier did (vLLM's own LRU policy, unchanged, with
a log); ``bench/plan_vs_logged.py`` then drives the planner's device cache and tiers with the
server's lookups, per-step stores, load completions and finishes. With no time model left,
the planner must find the hits the server found, request by request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from atom_tier.replay.synth import SynthSpec, write_traces
from atom_tier.replay.traces import load_traces

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import plan_vs_logged  # noqa: E402
import three_arms  # noqa: E402

pytestmark = pytest.mark.server


def test_the_planner_at_the_servers_own_times_finds_the_servers_hits(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    write_traces(traces, SynthSpec(count=12, seed=7, requests=8, subagent_rate=0.2))
    argv = ["--traces", str(traces), "--limit-traces", "12", "--duration", "30",
            "--users", "4", "--model", "tiny", "--kv-blocks", "36", "--max-model-len", "4096",
            "--dram-gb", "0.005", "--arms", "B", "--trace-dram", "--no-docs",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert three_arms.main(argv) == 0
    opts = three_arms.parse_args(argv)
    opts.chunk_tokens = 256
    logged, counts = plan_vs_logged.read_trace(tmp_path / "out" / "arm-B" / "dram-trace.jsonl")
    sessions = load_traces(traces, limit=12, seed=opts.seed).sessions
    tiers = plan_vs_logged.replay_arm(opts, sessions, "B", logged, show=10, server_device=True)
    server = tiers["server"]
    # The replay named every request (X-Request-Id), and the planner built each one alike.
    assert tiers["requests"] > 20
    assert tiers["not_in_plan"] == 0 and tiers["prompt_mismatch"] == 0
    # The DRAM tier served hits and had to evict: the case the model has to get right.
    assert server["tiers"] > 0
    assert counts["evict_none"] == 0
    assert any(victims for r in logged.values() for _, _, victims in r.changes)
    # Past the server's own device hits, the planner's DRAM tier (vLLM's LRU, its pins, its
    # per-step stores) holds what the server's held and serves what it served, to a chunk.
    assert abs(tiers["planner"]["tiers"] - server["tiers"]) <= 256, tiers["differ"]
    assert len(tiers["diverged"]) <= tiers["requests"] // 20, tiers["diverged"][:1]
    # With the planner's own device model (block-level prefix cache) too: within 2 %.
    both = plan_vs_logged.replay_arm(opts, sessions, "B", logged, show=10)
    assert both["planner"]["device"] == pytest.approx(server["device"], rel=0.02), both["differ"]
    found, served = (sum(got[k] for k in ("device", "tiers")) for got in (both["planner"], server))
    assert found == pytest.approx(served, rel=0.02), both["differ"]
