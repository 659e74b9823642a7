"""The NVMe tier in real CPU vLLM servers with AtomTierConnector.

The device KV cache holds 12 blocks of 128 tokens and the DRAM tier 6 chunks of 256 tokens,
so a handful of 600-token prompts push an earlier prompt out of both; only the NVMe tier can
then serve it. Reference outputs come from the session's server without any connector.
Servers of this module share one NVMe directory: written by the first, read after a clean
restart by the second, after a SIGKILL (and files corrupted while down) by the third.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from tests.tiers.conftest import disk_usage

pytestmark = pytest.mark.server

ARGS = [
    "--max-model-len", "1024",
    "--num-gpu-blocks-override", "12",
    "--kv-transfer-config", '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}',
]  # fmt: skip
DRAM_GB = "0.00075"  # 6 chunks of 128 KiB (256 tokens x 512 KV bytes per token)
NVME = {"tier": "1:AtomTierNvmeTier"}
CHUNK_TOKENS = 256
PREFIX = 1
OTHERS = range(100, 105)
M = "atom_tier:nvme_tier_"
STATE: dict[str, Any] = {}  # shared by the tests of this module, in order


def tokens(seed: int, count: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(count)]


def run(server: CpuVllmServer, prompt: list[int]) -> dict[str, Any]:
    choice: dict[str, Any] = server.complete(prompt, max_tokens=8, logprobs=1)["choices"][0]
    return choice


def moved(server: CpuVllmServer, action: Callable[[], Any], name: str, **labels: str) -> float:
    before = server.metric_sum(name, **labels)
    action()
    return server.metric_sum(name, **labels) - before


@pytest.fixture(scope="module")
def nvme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nvme")


@pytest.fixture(scope="module")
def env(nvme_dir: Path) -> dict[str, str]:
    return {
        "ATOM_TIER_DRAM_GB": DRAM_GB,
        "ATOM_TIER_NVME_PATH": str(nvme_dir),
        "ATOM_TIER_NVME_GB": "0.05",
    }


@pytest.fixture(scope="module")
def reference(cpu_server: CpuVllmServer) -> dict[int, str]:
    """Greedy outputs of a server without any KV connector."""
    return {seed: run(cpu_server, tokens(seed))["text"] for seed in (PREFIX, *OTHERS, 200, 201)}


@pytest.fixture(scope="module")
def first(module_server_factory: Callable[..., CpuVllmServer], env: dict[str, str]) -> Any:
    return module_server_factory(args=ARGS, env=env)


def test_prefix_evicted_from_device_and_dram_reloads_from_nvme(
    first: CpuVllmServer, reference: dict[int, str]
) -> None:
    prompt = tokens(PREFIX)
    cold = run(first, prompt)
    root = STATE["root"] = _tier_root(first)
    deadline = time.monotonic() + 30
    while len(list(root.glob("??/*.kvc"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    STATE["prefix_files"] = set(root.glob("??/*.kvc"))  # the prompt's two chunks
    assert len(STATE["prefix_files"]) == 2
    native_hit = run(first, prompt)  # vLLM's own prefix cache serves it right away
    for seed in OTHERS:  # 5 x 5 blocks through 12 device blocks, 5 x 2 chunks through 6 DRAM
        assert run(first, tokens(seed))["text"] == reference[seed]

    reused = 2 * CHUNK_TOKENS
    before = first.metrics()
    warm = run(first, prompt)
    after = first.metrics()

    def delta(name: str, **labels: str) -> float:
        def total(values: dict[str, float]) -> float:
            return sum(
                v
                for k, v in values.items()
                if k.partition("{")[0] in (name, name + "_total")
                and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())
            )

        return total(after) - total(before)

    assert delta("vllm:prefix_cache_hits") == 0, "vLLM's own cache still held the prefix"
    assert delta("vllm:kv_offload_tiering_chunk_hits", tier="0:primary") == 0
    assert delta("vllm:kv_offload_tiering_chunk_hits", **NVME) == 2
    assert delta("vllm:prompt_tokens_cached_by_source", source="disk") == reused
    assert delta(M + "reads") == 2 and delta(M + "corrupt_dropped") == 0
    assert warm["text"] == cold["text"] == reference[PREFIX]
    # The same KV bytes came back from disk: logprobs equal vLLM's own prefix-hit run.
    assert warm["logprobs"]["token_logprobs"] == native_hit["logprobs"]["token_logprobs"]
    assert f"atom-tier hit tokens: {reused} (dram 0, nvme {reused})" in first.log_text()
    assert first.metric_sum(M + "usage_bytes") == disk_usage(root)
    assert first.metric_sum(M + "o_direct") == 1


def _tier_root(server: CpuVllmServer) -> Path:
    for line in server.log_text().splitlines():
        if "atom-tier NVMe tier (" in line:
            return Path(line.rsplit(" at ", 1)[1].strip())
    raise AssertionError("the NVMe tier did not start")


def test_after_a_clean_restart_the_prefix_is_served_from_nvme(
    first: CpuVllmServer,
    module_server_factory: Callable[..., CpuVllmServer],
    env: dict[str, str],
    reference: dict[int, str],
) -> None:
    first.stop(sig=signal.SIGINT)
    second = module_server_factory(args=ARGS, env=env)
    served = moved(
        second,
        lambda: _same(second, PREFIX, reference),
        "vllm:prompt_tokens_cached_by_source",
        source="disk",
    )
    assert served == 2 * CHUNK_TOKENS
    assert second.metric_sum(M + "rebuild_chunks") == 12  # 6 prompts x 2 chunks

    # SIGKILL the whole server while it stores the KV of new prompts to the tier.
    def load() -> None:
        for seed in (200, 201):
            try:
                run(second, tokens(seed))
            except Exception:
                return  # the server is gone

    writer = threading.Thread(target=load)
    writer.start()
    deadline = time.monotonic() + 60
    while second.metric_sum(M + "writes") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # kill as soon as the first new chunk is on disk
    assert second.process is not None
    os.killpg(second.process.pid, signal.SIGKILL)
    writer.join()
    second.stop()


def _same(server: CpuVllmServer, seed: int, reference: dict[int, str]) -> None:
    assert run(server, tokens(seed))["text"] == reference[seed]


def _damage(files: list[Path]) -> None:
    """Cut the first file short, flip a payload byte in every other one."""
    os.truncate(files[0], 4096 + 5000)
    for path in files[1:]:
        with open(path, "r+b") as f:
            f.seek(4096 + 1000)
            byte = f.read(1)
            f.seek(4096 + 1000)
            f.write(bytes([byte[0] ^ 0xFF]))


def test_after_sigkill_and_damaged_files_outputs_stay_right(
    module_server_factory: Callable[..., CpuVllmServer],
    env: dict[str, str],
    reference: dict[int, str],
) -> None:
    root: Path = STATE["root"]
    others = sorted(set(root.glob("??/*.kvc")) - STATE["prefix_files"])
    assert len(others) >= 10
    _damage(others)  # while the server is down; the first prompt's chunks stay intact
    third = module_server_factory(args=ARGS, env=env)
    served = moved(
        third,
        lambda: _same(third, PREFIX, reference),
        "vllm:prompt_tokens_cached_by_source",
        source="disk",
    )
    assert served == 2 * CHUNK_TOKENS
    for seed in (*OTHERS, 200, 201):
        _same(third, seed, reference)  # damaged chunks are recomputed, never served
    assert third.metric_sum(M + "corrupt_truncated") == 1  # dropped by the index rebuild
    assert third.metric_sum(M + "corrupt_checksum") >= 4  # dropped when read
    assert third.metric_sum(M + "faults") == 0
    assert disk_usage(root) == third.metric_sum(M + "usage_bytes")
    assert third.metric_sum(M + "usage_bytes") <= third.metric_sum(M + "capacity_bytes")
    assert not list(root.glob("??/*.tmp"))


def test_a_full_filesystem_stops_tier_writes_not_the_server(
    server_factory: Callable[..., CpuVllmServer],
    mount_tmpfs: Callable[[str], Path],
    reference: dict[int, str],
) -> None:
    disk = mount_tmpfs("4M")
    env = {"ATOM_TIER_DRAM_GB": DRAM_GB, "ATOM_TIER_NVME_PATH": str(disk / "tier")}
    server = server_factory(args=ARGS, env={**env, "ATOM_TIER_NVME_GB": "0.003"})
    (disk / "filler").write_bytes(bytes(3 * 2**20))  # someone else fills the disk
    for seed in (PREFIX, *OTHERS):
        _same(server, seed, reference)
    assert server.metric_sum(M + "fault_enospc") >= 1
    assert server.metric_sum(M + "write_disabled") == 1
    assert server.metric_sum(M + "stores_skipped_disabled") >= 1
    assert "The tier stops writing" in server.log_text()
    for seed in (PREFIX, *OTHERS):  # and it keeps serving, from DRAM and what NVMe holds
        _same(server, seed, reference)
