"""Two real CPU vLLM servers sharing one real Valkey/Redis server as their shared tier.

A prompt served by server 1 is served by server 2, which never saw it, with its prefix loaded
from the shared tier; after both servers restart it still hits; a cache server killed
mid-run fails no request, and the tier comes back with it. Reference outputs come from the
session's server without any connector.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.valkey_server import ValkeyServer

pytestmark = pytest.mark.server

ARGS = [
    "--max-model-len", "1024",
    "--num-gpu-blocks-override", "12",
    "--kv-transfer-config", '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}',
]  # fmt: skip
DRAM_GB = "0.00075"  # 6 chunks of 128 KiB (256 tokens x 512 KV bytes per token)
SHARED = {"tier": "1:AtomTierSharedTier"}
M = "atom_tier:shared_tier_"
CHUNK_TOKENS = 256
PREFIX = 1
OTHERS = range(100, 105)


def tokens(seed: int, count: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(count)]


def run(server: CpuVllmServer, prompt: list[int]) -> dict[str, Any]:
    choice: dict[str, Any] = server.complete(prompt, max_tokens=8, logprobs=1)["choices"][0]
    return choice


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


class Delta:
    """Metric changes across a block of requests on one server."""

    def __init__(self, server: CpuVllmServer) -> None:
        self.server = server

    def __enter__(self) -> Delta:
        self.before = self.server.metrics()
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = self.server.metrics()

    def __call__(self, name: str, **labels: str) -> float:
        def total(values: dict[str, float]) -> float:
            return sum(
                v
                for k, v in values.items()
                if k.partition("{")[0] in (name, name + "_total")
                and all(f'{lk}="{lv}"' in k for lk, lv in labels.items())
            )

        return total(self.after) - total(self.before)


@pytest.fixture(scope="module")
def cache(valkey_server: ValkeyServer) -> ValkeyServer:
    valkey_server.start()
    valkey_server.command("FLUSHALL")
    valkey_server.command("CONFIG", "SET", "maxmemory", "64mb")
    valkey_server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    return valkey_server


@pytest.fixture(scope="module")
def env(cache: ValkeyServer) -> dict[str, str]:
    return {
        "ATOM_TIER_DRAM_GB": DRAM_GB,
        "ATOM_TIER_SHARED_URL": cache.url,
        "ATOM_TIER_SHARED_TIMEOUT_S": "0.5",
    }


@pytest.fixture(scope="module")
def reference(cpu_server: CpuVllmServer) -> dict[int, str]:
    return {seed: run(cpu_server, tokens(seed))["text"] for seed in (PREFIX, 300, 301)}


@pytest.fixture(scope="module")
def servers(module_server_factory: Callable[..., CpuVllmServer], env: dict[str, str]) -> Any:
    return [module_server_factory(args=ARGS, env=env) for _ in range(2)]


@pytest.fixture(scope="module")
def native_hit(servers: list[CpuVllmServer], reference: dict[int, str]) -> dict[str, Any]:
    """The prefix served cold by replica 1 (which stores it), then from its own prefix cache:
    the logprobs any correct reload of the same KV bytes must reproduce."""
    one = servers[0]
    assert run(one, tokens(PREFIX))["text"] == reference[PREFIX]
    wait_for(lambda: one.metric_sum(M + "writes") >= 2)
    return run(one, tokens(PREFIX))


def test_a_prefix_stored_by_one_replica_is_served_by_another(
    servers: list[CpuVllmServer],
    cache: ValkeyServer,
    reference: dict[int, str],
    native_hit: dict[str, Any],
) -> None:
    one, two = servers
    prompt = tokens(PREFIX)
    with Delta(two) as delta:
        warm = run(two, prompt)
    reused = 2 * CHUNK_TOKENS
    assert delta("vllm:kv_offload_tiering_chunk_hits", **SHARED) == 2
    assert delta("vllm:prompt_tokens_cached_by_source", source="external_unspecified") == reused
    assert delta(M + "reads") == 2 and delta(M + "corrupt_dropped") == 0
    assert warm["text"] == reference[PREFIX]
    assert warm["logprobs"]["token_logprobs"] == native_hit["logprobs"]["token_logprobs"]
    assert f"atom-tier hit tokens: {reused} (dram 0, nvme 0, shared {reused})" in two.log_text()
    assert two.metric_sum(M + "ready") == 1 and two.metric_sum(M + "breaker_open") == 0
    # The URL's password never reaches a log line.
    assert cache.password and cache.password not in one.log_text() + two.log_text()


def test_after_both_replicas_restart_the_prefix_still_hits(
    servers: list[CpuVllmServer],
    module_server_factory: Callable[..., CpuVllmServer],
    env: dict[str, str],
    reference: dict[int, str],
    native_hit: dict[str, Any],
) -> None:
    for server in servers:
        server.stop(sig=signal.SIGINT)
    servers[:] = [module_server_factory(args=ARGS, env=env) for _ in range(2)]
    with Delta(servers[1]) as delta:
        warm = run(servers[1], tokens(PREFIX))
    assert delta("vllm:kv_offload_tiering_chunk_hits", **SHARED) == 2
    assert warm["text"] == reference[PREFIX]
    assert warm["logprobs"]["token_logprobs"] == native_hit["logprobs"]["token_logprobs"]


def test_a_dead_cache_server_fails_no_request_and_the_tier_recovers(
    servers: list[CpuVllmServer], cache: ValkeyServer, reference: dict[int, str]
) -> None:
    one, two = servers
    cache.kill()
    try:
        # New prompts miss the tier: the first lookup opens the breaker, the rest skip it.
        assert run(one, tokens(300))["text"] == reference[300]
        for seed in OTHERS:
            run(one, tokens(seed))
        assert one.metric_sum(M + "breaker_open") == 1
        assert one.metric_sum(M + "breaker_opened") == 1
    finally:
        cache.start()  # back, empty
    cache.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")

    def recovered() -> bool:
        # The breaker lets a lookup through as a trial after its back-off.
        run(one, tokens(random.randrange(1000, 9000)))
        return one.metric_sum(M + "breaker_open") == 0

    wait_for(recovered, 60)
    assert run(one, tokens(301))["text"] == reference[301]
    wait_for(lambda: int(str(cache.command("DBSIZE"))) >= 2)
    with Delta(two) as delta:
        assert run(two, tokens(301))["text"] == reference[301]
    assert delta("vllm:kv_offload_tiering_chunk_hits", **SHARED) == 2
