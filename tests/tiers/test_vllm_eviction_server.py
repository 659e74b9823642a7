"""ATOM_TIER_EVICTION=sticky in a real CPU vLLM server: vLLM loads the policy out of tree,
the DRAM tier runs it, and an evicted prefix still reloads from DRAM.

The device KV cache holds 12 blocks of 128 tokens, so four 600-token prompts push an earlier
prompt out of it; the DRAM tier (256 MiB, far more than these prompts) keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from tests.connector.test_connector_server import CONNECTOR_ARGS, DRAM, run, tokens

pytestmark = pytest.mark.server


def test_a_server_serves_dram_hits_with_the_sticky_policy(
    server_factory: Callable[..., CpuVllmServer],
) -> None:
    server = server_factory(
        args=CONNECTOR_ARGS, env={"ATOM_TIER_DRAM_GB": "0.25", "ATOM_TIER_EVICTION": "sticky"}
    )
    log = server.log_text()
    assert "eviction StickyCachePolicy" in log  # atom-tier's start-up line
    assert "primary tier (StickyCachePolicy," in log  # vLLM's TieringOffloadingSpec
    prompt = tokens(1, 600)
    cold = run(server, prompt)
    native_hit = run(server, prompt)  # from vLLM's own prefix cache, before the eviction
    for seed in range(100, 104):
        run(server, tokens(seed, 600))  # 4 x 5 blocks through a 12-block cache
    hits_before = server.metric_sum("vllm:kv_offload_tiering_chunk_hits", **DRAM)
    warm = run(server, prompt)
    assert server.metric_sum("vllm:kv_offload_tiering_chunk_hits", **DRAM) - hits_before == 2
    assert warm["text"] == cold["text"]
    # Same cached prefix, same tokens computed after it: the reload from DRAM is byte-exact
    # (the greedy text of a tiny random model alone could match with wrong KV).
    assert warm["logprobs"]["token_logprobs"] == native_hit["logprobs"]["token_logprobs"]
