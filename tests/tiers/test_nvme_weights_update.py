"""Weights updated in place at the same path never decode on the old weights' NVMe chunks.

Real CPU vLLM servers with AtomTierConnector and an NVMe tier: the first serves a prompt from
the tiny model's weights and pushes its KV to disk; the model directory is then rewritten
with other weights of the same shapes (what a re-download or a fine-tune over
``/models/current`` does) and a second server starts on the same NVMe directory. The prompt
must be recomputed, with the new model's logprobs (the tiny random model repeats one token
whatever its weights, so logprobs, not text, show which KV was used).
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.tiny_model import build_tiny_model

pytestmark = pytest.mark.server

ARGS = [
    "--max-model-len", "1024",
    "--num-gpu-blocks-override", "12",
    "--kv-transfer-config", '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}',
]  # fmt: skip
NVME_READS = "atom_tier:nvme_tier_reads"
DISK = {"source": "disk"}


def tokens(seed: int, count: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(count)]


def logprobs(server: CpuVllmServer, prompt: list[int], **extra: Any) -> list[float]:
    choice = server.complete(prompt, max_tokens=8, logprobs=1, **extra)["choices"][0]
    return [float(v) for v in choice["logprobs"]["token_logprobs"]]


def test_weights_rewritten_at_the_same_path_are_not_served_old_kv(
    module_server_factory: Callable[..., CpuVllmServer], tmp_path: Path
) -> None:
    model = build_tiny_model(tmp_path / "current", seed=0)
    nvme = tmp_path / "nvme"
    env = {
        "ATOM_TIER_DRAM_GB": "0.00075",  # 6 chunks of 256 tokens
        "ATOM_TIER_NVME_PATH": str(nvme),
        "ATOM_TIER_NVME_GB": "0.05",
    }
    prompt = tokens(1)

    old = module_server_factory(args=ARGS, env=env, model_dir=model)
    old_logprobs = logprobs(old, prompt)
    for seed in range(100, 105):  # evicts the prompt from the device cache and DRAM tier
        old.complete(tokens(seed), max_tokens=2)
    deadline = time.monotonic() + 30
    while old.metric_sum("atom_tier:nvme_tier_writes") < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Positive control: on the same weights the prompt does come back from the NVMe tier.
    before = old.metric_sum("vllm:prompt_tokens_cached_by_source", **DISK)
    assert logprobs(old, prompt) == pytest.approx(old_logprobs, abs=1e-3)
    assert old.metric_sum("vllm:prompt_tokens_cached_by_source", **DISK) - before == 512
    old.stop(sig=signal.SIGINT)

    build_tiny_model(model, seed=1)  # other weights, same shapes, same path
    new = module_server_factory(args=ARGS, env=env, model_dir=model)
    served = logprobs(new, prompt)
    assert new.metric_sum("vllm:prompt_tokens_cached_by_source", **DISK) == 0
    assert new.metric_sum(NVME_READS) == 0
    cold = logprobs(new, prompt, cache_salt="cold-run")  # no cache of any kind applies
    assert served == pytest.approx(cold, abs=1e-3)
    assert served != pytest.approx(old_logprobs, abs=1e-3)  # the weights did change
    namespaces = sorted(p.name for p in nvme.iterdir() if p.is_dir())
    assert len(namespaces) == 2, namespaces
    assert "model identity" in new.log_text()
