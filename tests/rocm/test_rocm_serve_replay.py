"""On an AMD GPU: serve with both tiers, replay agentic traces, and see prefixes come back
from the tiers instead of being prefilled again.

The server starts with no --kv-transfer-config: atom-tier's ROCm platform adds the tiered
connector. Its KV pool is cut to a little over one max-length request (sized in bytes from the
model's KV bytes per token, FP8), so three closed-loop users evict each other's prefixes; the
DRAM tier is twice the DRAM-size guard's minimum and an NVMe tier sits behind it. The replay
is atom-tier's own (atom_tier.replay) over synthetic traces in the kv-cache-tester format; the
hits are what the server counted in its /metrics, by source.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from rocm_support import RESULTS_ENV, kv_bytes_per_token

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.replay.cli import replay_against, write_results
from atom_tier.replay.report import summary
from atom_tier.replay.runner import ReplayOptions
from atom_tier.replay.synth import SynthSpec, write_traces
from atom_tier.replay.traces import load_traces

pytestmark = [pytest.mark.rocm, pytest.mark.timeout(1800)]

MAX_MODEL_LEN = 4096  # the server harness's default
POOL_TOKENS = 4608  # device KV pool: one max-length request and a little more
CHUNK_TOKENS = 256  # atom-tier's default chunk
GIB = 1024**3
HIT_LINE = re.compile(r"atom-tier hit tokens: (\d+) \(dram (\d+), nvme (\d+)")


def tier_env(bytes_per_token: int, nvme: Path) -> dict[str, str]:
    # One reload at a time: the pool holds one full-length prefix. Said explicitly, so the
    # DRAM-size guard does not depend on how the platform rounds the pool into blocks.
    minimum = -(-MAX_MODEL_LEN // CHUNK_TOKENS) * CHUNK_TOKENS * bytes_per_token
    return {
        "ATOM_TIER_RELOAD_CONCURRENCY": "1",
        "ATOM_TIER_DRAM_GB": repr(2 * minimum / GIB),
        "ATOM_TIER_NVME_PATH": str(nvme),
        "ATOM_TIER_NVME_GB": "1",
    }


def test_replay_gets_prefix_hits_from_the_tiers(
    rocm_server: object, rocm_model: Path, tmp_path: Path
) -> None:
    bytes_per_token = kv_bytes_per_token(str(rocm_model))
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    server: CpuVllmServer = rocm_server(  # type: ignore[operator]
        "tiers",
        args=["--kv-cache-memory-bytes", str(POOL_TOKENS * bytes_per_token)],
        env=tier_env(bytes_per_token, nvme),
    )
    log = server.log_text()
    assert re.search(r"\[on \] kv_connector\s+AtomTierConnector", log), log[-4000:]
    assert "secondary tiers: AtomTierNvmeTier" in log

    traces = tmp_path / "traces"
    write_traces(traces, SynthSpec(count=6, seed=1, subagent_rate=0.5))
    options = ReplayOptions(
        duration=60, start_users=3, max_users=3, period=10, think_scale=0.1, max_think=2.0,
        seed=1, label="rocm-tiers",
    )  # fmt: skip
    result = asyncio.run(
        replay_against(
            server.base_url,
            load_traces(traces).sessions,
            options,
            token_scale=1 / 16,
            max_output_tokens=8,
        )
    )
    figures = summary(result)
    if os.environ.get(RESULTS_ENV):
        write_results(result, Path(os.environ[RESULTS_ENV]) / "replay-tiers", plots=False)

    assert figures["requests_completed"] > 5 and figures["requests_failed"] == 0, figures
    hits = figures["hit_tokens"]
    assert hits.get("host", 0) + hits.get("disk", 0) > 0, hits
    # The same, from the server's counters and from the connector's per-request log line.
    served = server.metric_sum("vllm:prompt_tokens_cached_by_source", source="host")
    served += server.metric_sum("vllm:prompt_tokens_cached_by_source", source="disk")
    assert served > 0
    tier_lines = [tuple(map(int, m)) for m in HIT_LINE.findall(server.log_text())]
    assert any(total > 0 for total, _, _ in tier_lines), tier_lines[-5:]
