"""``atom-tier plan --metrics`` against a real CPU server with a DRAM and an NVMe tier.

The device holds 12 blocks of 128 tokens and the DRAM tier 6 chunks of 256 tokens (as in
tests/tiers/test_nvme_e2e.py): a 600-token prompt P is sent twice (the second served by the
device, 512 tokens), five others push it out of the device and of DRAM, then P comes back from
NVMe (512 tokens). Expected, by the rule: device too small (512 served below of 1024 reused:
50 % >= 25 %), DRAM too small (0 hits, 512 below), NVMe too large (evicted nothing, 12 chunks
of 128 KiB in a 51 MiB cap: 3 % full).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from atom_tier.cli import main
from atom_tier.devtools.cpu_server import CpuVllmServer

pytestmark = pytest.mark.server

ARGS = [
    "--max-model-len", "1024",
    "--num-gpu-blocks-override", "12",
    "--kv-transfer-config", '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}',
]  # fmt: skip


def tokens(seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(600)]


def test_plan_metrics_reads_a_running_server(
    server_factory: Callable[..., CpuVllmServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_factory(
        args=ARGS,
        env={
            "ATOM_TIER_DRAM_GB": "0.00075",
            "ATOM_TIER_NVME_PATH": str(tmp_path / "nvme"),
            "ATOM_TIER_NVME_GB": "0.05",
        },
    )
    writes = "atom_tier:nvme_tier_writes"
    prompt = tokens(1)
    server.complete(prompt, max_tokens=4)
    server.complete(prompt, max_tokens=4)
    for seed in range(100, 105):
        server.complete(tokens(seed), max_tokens=4)
    deadline = time.monotonic() + 30
    while server.metric_sum(writes) < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    server.complete(prompt, max_tokens=4)
    capsys.readouterr()
    assert main(["plan", "--metrics", server.base_url]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "prompt tokens 4,800: device 512 (10.7%), DRAM tier 0 (0.0%), NVMe tier 512" in out
    assert "device: too small — 50% of the reuse" in out
    assert "DRAM tier: too small — 100% of the reuse" in out
    assert "NVMe tier: too large — it evicted nothing and is 3% full" in out
