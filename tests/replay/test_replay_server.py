"""End to end against a real CPU vLLM server: a short replay of synthetic traces.

Checks the files a run writes and that the server itself counted prefix-cache hits: from its
own KV pool, and, with atom-tier's DRAM tier and a KV pool too small for the users' contexts,
from the tier.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
from pathlib import Path

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.tiny_model import vocabulary
from atom_tier.replay import cli
from atom_tier.replay.client import ReplayClient, ServerInfo
from atom_tier.replay.plots import HITS_PNG, TTFT_PNG
from atom_tier.replay.report import PERIODS_CSV, REQUESTS_CSV, SUMMARY_JSON
from atom_tier.replay.synth import SynthSpec, write_traces

pytestmark = pytest.mark.server

CONNECTOR = json.dumps({"kv_connector": "AtomTierConnector", "kv_role": "kv_both"})


def _replay(url: str, traces: Path, out: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = [str(traces), "--url", url, "--out", str(out), "--token-scale", "0.0625",
            "--think-scale", "0.1", "--max-think", "2", "--period", "5",
            "--max-output-tokens", "8", "--seed", "1", *extra]  # fmt: skip
    return cli.run(parser.parse_args(argv))


def _traces(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    write_traces(folder, SynthSpec(count=6, seed=1, subagent_rate=0.5))
    return folder


def test_replay_writes_results_and_the_server_saw_prefix_hits(
    cpu_server: CpuVllmServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = cpu_server.metric_sum("vllm:prompt_tokens_cached_by_source", source="device")
    out = tmp_path / "out"
    code = _replay(cpu_server.base_url, _traces(tmp_path), out, "--duration", "25",
                   "--start-users", "1", "--max-users", "3", "--label", "e2e")  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "requests completed" in printed and "server hit tokens       device" in printed

    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["requests_completed"] > 5
    assert summary["requests_failed"] == 0
    assert summary["max_users_reached"] >= 2  # the ramp added users
    assert summary["options"]["max_context"] == 4096  # from the server's max_model_len
    assert summary["hit_tokens"]["device"] > 0
    after = cpu_server.metric_sum("vllm:prompt_tokens_cached_by_source", source="device")
    assert after - before == summary["hit_tokens"]["device"]

    with (out / REQUESTS_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["requests_completed"]
    # ignore_eos: every request generates its scaled recorded length, capped at 8.
    assert all(float(r["ttft_s"]) > 0 and 1 <= int(r["output_tokens"]) <= 8 for r in rows)
    assert any(int(r["output_tokens"]) == 8 for r in rows)
    # Prompt lengths as the server counted them equal the scaled trace lengths (>= 1 block).
    assert all(int(r["input_tokens"]) >= 4 for r in rows)
    with (out / PERIODS_CSV).open() as handle:
        periods = list(csv.DictReader(handle))
    assert sum(int(p["completed"]) for p in periods) == summary["requests_completed"]
    assert sum(float(p["hit_tokens_device"]) for p in periods) == summary["hit_tokens"]["device"]
    for png in (TTFT_PNG, HITS_PNG):
        assert (out / png).read_bytes().startswith(b"\x89PNG")


def test_vocabulary_is_found_by_asking_the_server(cpu_server: CpuVllmServer) -> None:
    async def probe(root: str | None) -> int:
        async with ReplayClient(cpu_server.base_url) as client:
            return await client.vocab_size(ServerInfo(cpu_server.base_url, "tiny", None, root))

    # Without a readable config.json the server is asked (bisection on one-token prompts).
    assert asyncio.run(probe(None)) == len(vocabulary())
    assert asyncio.run(probe(str(cpu_server.model_dir))) == len(vocabulary())


def test_small_kv_pool_with_dram_tier_reports_tier_hits(
    server_factory: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 36 blocks of 128 tokens: just over one 4096-token request; three users with ~1K-token
    # contexts evict each other's prefixes, which come back from the DRAM tier.
    server: CpuVllmServer = server_factory(  # type: ignore[operator]
        args=["--num-gpu-blocks-override", "36", "--kv-transfer-config", CONNECTOR],
        env={"ATOM_TIER_DRAM_GB": "0.05"},
    )
    out = tmp_path / "out"
    code = _replay(server.base_url, _traces(tmp_path), out, "--duration", "30",
                   "--start-users", "3", "--max-users", "3", "--no-plots")  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["requests_failed"] == 0
    assert summary["hit_tokens"]["host"] > 0, printed
    assert server.metric_sum("vllm:prompt_tokens_cached_by_source", source="host") > 0
