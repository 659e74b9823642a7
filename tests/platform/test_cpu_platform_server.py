"""End to end on CPU: real `vllm.entrypoints.openai.api_server` processes, nothing faked.

With the CPU development platform (ATOM_TIER_CPU_PLATFORM=1) a plain start — no
--kv-transfer-config — gets the tiered connector and prints the feature block once. With the
disable switch the server is indistinguishable from stock vLLM (all plugins off, VLLM_PLUGINS="").
"""

from __future__ import annotations

import re

import pytest

from atom_tier.devtools.tiny_model import words

pytestmark = pytest.mark.server

BLOCK_HEADER = re.compile(r"\((\w+) pid=\d+\).*atom-tier \S+ features \(platform cpu\):")
PROMPT = words(48, start=5)


def cache_info(server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The labels of vLLM's cache_config_info metric (dtype, prefix caching, block size...)."""
    key = next(k for k in server.metrics() if k.startswith("vllm:cache_config_info{"))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
    labels.pop("kv_cache_memory_bytes", None)  # sized from free memory at start-up
    return labels


def test_plain_start_gets_the_connector_and_one_feature_block(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(env={"ATOM_TIER_CPU_PLATFORM": "1"})
    log = server.log_text()
    # vLLM's "Platform plugin ... is activated" line comes before its logging is set up and is
    # not printed; the block's header names the platform class that configured vLLM.
    blocks = BLOCK_HEADER.findall(log)
    assert blocks == ["APIServer"], "one block, from the process that configured vLLM"
    assert re.search(r"\[on \] kv_connector\s+AtomTierConnector", log)
    # The connector vLLM really built, in the scheduler (engine core) and in the worker.
    created = re.findall(r"\((\w+)[-\w]* pid=\d+\).*Creating v1 connector with name: (\w+)", log)
    assert {("EngineCore", "AtomTierConnector"), ("Worker", "AtomTierConnector")} <= set(created)
    reply = server.complete(PROMPT, max_tokens=4)
    assert reply["usage"]["prompt_tokens"] == 48
    assert cache_info(server)["enable_prefix_caching"] == "True"


def test_disable_switch_behaves_like_stock_vllm(server_factory) -> None:  # type: ignore[no-untyped-def]
    disabled = server_factory(env={"ATOM_TIER_CPU_PLATFORM": "1", "ATOM_TIER_DISABLE": "1"})
    stock = server_factory(env={"VLLM_PLUGINS": ""})  # no plugin of any package loads
    log = disabled.log_text()
    assert "atom-tier" not in log and "Creating v1 connector" not in log
    assert cache_info(disabled) == cache_info(stock)
    assert cache_info(stock)["cache_dtype"] == "auto"
    ours = disabled.complete(PROMPT, max_tokens=8)["choices"][0]["text"]
    theirs = stock.complete(PROMPT, max_tokens=8)["choices"][0]["text"]
    assert ours == theirs
