"""configs/grafana's dashboard queries only metrics a real server exposes.

A real CPU vLLM server with atom-tier's connector, DRAM, NVMe and shared tiers (a real
Valkey/Redis server) serves prompts that push a prefix out of the device cache and the DRAM
tier and back from NVMe; then every metric
name in every panel query must be on its /metrics. A metric counts as there when /metrics
declares it (``# TYPE``) or has a sample of it: vLLM declares every offloading counter at start
but prints a labeled sample only after its first increment, and a healthy server has never
counted a corrupt chunk.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "atom-tier-kv-tiers.json"
SHARED_ROW = "Shared tier"
SHARED_PREFIX = "atom_tier:shared_tier_"
METRIC = re.compile(r"\b(?:vllm|atom_tier):[a-zA-Z0-9_:]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
ARGS = [
    "--max-model-len", "1024",
    "--num-gpu-blocks-override", "12",
    "--kv-transfer-config", '{"kv_connector":"AtomTierConnector","kv_role":"kv_both"}',
]  # fmt: skip


def _panels(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row title, panel) for every panel, those inside collapsed rows included."""
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            for inner in panel.get("panels", []):
                yield row, inner
        else:
            yield row, panel


def queried(shared: bool) -> set[str]:
    """Metric names the dashboard's queries use, in the shared tier's row or outside it."""
    names: set[str] = set()
    for row, panel in _panels(json.loads(DASHBOARD.read_text())):
        if row.startswith(SHARED_ROW) == shared:
            for target in panel.get("targets", []):
                names |= set(METRIC.findall(target["expr"]))
    return names


def exposed(text: str) -> set[str]:
    """Metric names /metrics declares or has samples of (histograms by their series too)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {name + suffix for suffix in HISTOGRAM_SUFFIXES}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def test_dashboard_is_grafana_json_with_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = [p for _, p in _panels(dashboard)]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p.get("targets") for p in panels)
    # Each group the dashboard is for has a query.
    names = queried(shared=False)
    for wanted in ("vllm:prompt_tokens_cached_by_source_total", "vllm:prefix_cache_hits_total",
                   "vllm:kv_offload_tiering_read_bytes_total", "atom_tier:kv_tier_usage_perc",
                   "atom_tier:nvme_tier_corrupt_dropped_total", "atom_tier:nvme_tier_faults_total",
                   "atom_tier:kv_tier_chunk_misses_total"):  # fmt: skip
        assert wanted in names, wanted
    assert all(n.startswith(SHARED_PREFIX) for n in queried(shared=True))


@pytest.fixture(scope="module")
def metrics_text(
    module_server_factory: Any, tmp_path_factory: pytest.TempPathFactory, valkey_server: Any
) -> str:
    nvme = tmp_path_factory.mktemp("nvme")
    valkey_server.start()
    env = {"ATOM_TIER_DRAM_GB": "0.00075", "ATOM_TIER_NVME_PATH": str(nvme),
           "ATOM_TIER_NVME_GB": "0.05", "ATOM_TIER_SHARED_URL": valkey_server.url}  # fmt: skip
    server: CpuVllmServer = module_server_factory(args=ARGS, env=env)

    def tokens(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [rng.randrange(10, 500) for _ in range(600)]

    # A prefix, five others through 12 device blocks and 6 DRAM chunks, the prefix again.
    for seed in (1, 100, 101, 102, 103, 104, 1):
        server.complete(tokens(seed), max_tokens=4)
    assert server.metric_sum("vllm:prompt_tokens_cached_by_source", source="disk") > 0
    return str(server.request("/metrics"))


@pytest.mark.server
def test_every_metric_the_dashboard_queries_is_exposed(metrics_text: str) -> None:
    missing = sorted(queried(shared=False) - exposed(metrics_text))
    assert not missing, f"{DASHBOARD.name} queries metrics /metrics does not have: {missing}"


@pytest.mark.server
def test_shared_tier_row_metrics_are_exposed(metrics_text: str) -> None:
    have = exposed(metrics_text)
    missing = sorted(queried(shared=True) - have)
    assert not missing, f"the shared tier row queries metrics /metrics does not have: {missing}"
