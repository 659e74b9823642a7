"""AtomTierConnector in real CPU vLLM servers.

One connector server is shared by the module (its last test stops it cleanly); a second one,
started with decode saving on, is stopped with SIGTERM; the session's default server (no
connector) is the "off" side of the on/off comparison.

The device KV cache holds 12 blocks of 128 tokens, so four 600-token prompts push an earlier
prompt out of it; the DRAM tier keeps it in chunks of 256 tokens (2 blocks).
"""

from __future__ import annotations

import random
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer

pytestmark = pytest.mark.server

CONNECTOR_ARGS = [
    "--max-model-len", "1024",
    "--num-gpu-blocks-override", "12",
    "--kv-transfer-config", '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}',
]  # fmt: skip
CONNECTOR_ENV = {"ATOM_TIER_DRAM_GB": "0.25"}
CHUNK_TOKENS = 256
REGION = re.compile(r"Created mmap file (/dev/shm/vllm_offload_(\S+)\.mmap)")
DRAM = {"tier": "0:primary"}


def tokens(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(count)]


def region_file(server: CpuVllmServer) -> Path:
    match = REGION.search(server.log_text())
    assert match, "the DRAM tier region was not created"
    return Path(match.group(1))


def run(server: CpuVllmServer, prompt: list[int], **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = server.complete(prompt, max_tokens=8, logprobs=1, **extra)["choices"][
        0
    ]
    return choice


def delta(server: CpuVllmServer, action: Callable[[], Any], name: str, **labels: str) -> float:
    before = server.metric_sum(name, **labels)
    action()
    return server.metric_sum(name, **labels) - before


@pytest.fixture(scope="module")
def tiered(module_server_factory: Callable[..., CpuVllmServer]) -> CpuVllmServer:
    return module_server_factory(args=CONNECTOR_ARGS, env=CONNECTOR_ENV)


def chunk_bytes(server: CpuVllmServer) -> float:
    capacity = server.metric_sum("atom_tier:kv_tier_capacity_bytes", **DRAM)
    chunks = int(re.search(r"primary tier \(lru, (\d+) chunks\)", server.log_text()).group(1))  # type: ignore[union-attr]
    return capacity / chunks


def test_region_name_is_gone_while_serving(tiered: CpuVllmServer) -> None:
    path = region_file(tiered)
    assert not path.exists(), f"{path} is still linked: a SIGKILL would leak it"
    assert "atom-tier tiered KV cache: DRAM tier 256.00 MiB" in tiered.log_text()


def test_evicted_prefix_reloads_from_dram(tiered: CpuVllmServer) -> None:
    prompt = tokens(1, 600)
    cold = run(tiered, prompt)
    native_hit = run(tiered, prompt)  # right away: vLLM's own prefix cache serves 512 tokens
    for seed in range(100, 104):
        run(tiered, tokens(seed, 600))  # 4 x 5 blocks through a 12-block cache

    metrics_before = tiered.metrics()
    warm = run(tiered, prompt)
    after = tiered.metrics()

    def moved(name: str, **labels: str) -> float:
        def total(values: dict[str, float]) -> float:
            return sum(
                v
                for k, v in values.items()
                if k.partition("{")[0] in (name, name + "_total")
                and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())
            )

        return total(after) - total(metrics_before)

    reused = 2 * CHUNK_TOKENS  # the prompt's full chunks
    assert moved("vllm:prefix_cache_hits") == 0, "vLLM's own cache still held the prefix"
    assert moved("vllm:prompt_tokens_cached_by_source", source="host") == reused
    assert moved("vllm:kv_offload_tiering_chunk_hits", **DRAM) == 2
    assert moved("vllm:kv_offload_load_bytes") == 2 * chunk_bytes(tiered)
    assert moved("atom_tier:kv_tier_chunk_misses", **DRAM) == 0
    assert warm["text"] == cold["text"]
    # Same cached KV, same 88 tokens computed: the DRAM copy is byte-exact.
    assert warm["logprobs"]["token_logprobs"] == native_hit["logprobs"]["token_logprobs"]
    assert f"atom-tier hit tokens: {reused} (dram {reused}, nvme 0)" in tiered.log_text()


def test_per_tier_metrics_are_exported(tiered: CpuVllmServer) -> None:
    names = {key.partition("{")[0] for key in tiered.metrics()}
    for name in (
        "atom_tier:kv_tier_chunk_misses_total",
        "atom_tier:kv_tier_used_bytes",
        "atom_tier:kv_tier_capacity_bytes",
        "atom_tier:kv_tier_usage_perc",
        "vllm:kv_offload_store_bytes_total",
        "vllm:kv_offload_load_time_total",
    ):
        assert name in names
    used = tiered.metric_sum("atom_tier:kv_tier_used_bytes", **DRAM)
    assert used > 0 and used % chunk_bytes(tiered) == 0


def test_decode_kv_is_not_saved_by_default(tiered: CpuVllmServer) -> None:
    prompt = tokens(7, CHUNK_TOKENS + 10)

    def generate() -> None:
        tiered.complete(prompt, max_tokens=300, ignore_eos=True)

    stored = delta(tiered, generate, "vllm:kv_offload_store_bytes")
    assert stored == chunk_bytes(tiered)  # the prompt's one full chunk, none of the 300 decoded


def test_connector_on_and_off_give_the_same_greedy_outputs(
    tiered: CpuVllmServer, cpu_server: CpuVllmServer
) -> None:
    off_names = {key.partition("{")[0] for key in cpu_server.metrics()}
    assert not any(n.startswith("vllm:kv_offload") for n in off_names), "off has a connector"
    shared = tokens(20, 300)
    prompts = [tokens(21, 40), shared + tokens(22, 200), shared + tokens(23, 500), tokens(24, 700)]
    prompts.append(prompts[1])  # a repeat, served from a cache on the connector side
    on = [run(tiered, p)["text"] for p in prompts]
    off = [run(cpu_server, p)["text"] for p in prompts]
    assert on == off


def test_clean_shutdown_leaves_nothing(tiered: CpuVllmServer) -> None:
    """Last test of the module: stops the shared server (Ctrl-C, as in a terminal)."""
    path = region_file(tiered)
    tiered.stop(sig=signal.SIGINT)
    assert not path.exists()
    assert not [p for p in Path("/dev/shm").iterdir() if path.stem in p.name]
    log = tiered.log_text()
    assert "Failed to unlink" not in log and "Failed to close mmap" not in log


def test_sigterm_leaves_nothing_and_save_decode_stores_decode_kv(
    server_factory: Callable[..., CpuVllmServer],
) -> None:
    server = server_factory(
        args=CONNECTOR_ARGS, env={**CONNECTOR_ENV, "ATOM_TIER_SAVE_DECODE": "1"}
    )
    assert "decode KV saved: yes" in server.log_text()
    prompt = tokens(7, CHUNK_TOKENS + 10)

    def generate() -> None:
        server.complete(prompt, max_tokens=300, ignore_eos=True)

    stored = delta(server, generate, "vllm:kv_offload_store_bytes")
    assert stored == 2 * chunk_bytes(server)  # 566 tokens: prompt and decode fill 2 chunks

    path = region_file(server)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)  # the API server only, as `docker stop` does
    server.process.wait(timeout=120)
    server.stop()  # reap whatever outlived it
    assert not path.exists()
    assert not [p for p in Path("/dev/shm").iterdir() if path.stem in p.name]
