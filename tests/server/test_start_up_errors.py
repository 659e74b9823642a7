"""Every bad setting stops a real CPU vLLM server before the weights load, in one message.

One server start per row (each exits within seconds: nothing is loaded). The other bad values
are covered by unit tests on real VllmConfigs (tests/preflight/test_connector_checks.py,
tests/preflight/test_checks.py, tests/platform/test_start_up.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer, ServerStartError

pytestmark = pytest.mark.server

HEADER = "atom-tier: vLLM not started"
ATOM_TIER_CONNECTOR_ARGS = [
    "--kv-transfer-config",
    json.dumps({"kv_connector": "AtomTierConnector", "kv_role": "kv_both"}),
]
# What vLLM logs once it starts the engine or loads a model: none of it may appear.
PAST_THE_SETTINGS_PHASE = (
    "EngineCore",
    "Starting to load model",
    "Loading weights",
    "Loading safetensors",
)

# (row id, environment, server arguments, a line the block must hold)
BAD_VALUES = [
    (
        "settings-parse",
        {"ATOM_TIER_DRAM_GB": "lots"},
        [],
        "- ATOM_TIER_DRAM_GB='lots' is not valid: expected a number >= 0",
    ),
    (
        "chunk-tokens",
        {"ATOM_TIER_CHUNK_TOKENS": "100"},
        [],
        "- [chunk-tokens] ATOM_TIER_CHUNK_TOKENS=100 is not a multiple of vLLM's KV block size, "
        "128 tokens (this server's block size)",
    ),
    (
        "preflight",
        {"ATOM_TIER_CONNECTOR": "native", "ATOM_TIER_NVME_PATH": "/nonexistent/atom-tier-kv"},
        [],
        "- [nvme-path] ATOM_TIER_NVME_PATH=/nonexistent/atom-tier-kv does not exist",
    ),
    (
        "connector-engine",
        {"ATOM_TIER_CONNECTOR": "off"},
        ATOM_TIER_CONNECTOR_ARGS,
        "- [connector-engine] --kv-transfer-config names AtomTierConnector (the native engine) "
        "but ATOM_TIER_CONNECTOR=off",
    ),
    (
        "shared-url",
        {"LMCACHE_REMOTE_URL": "lm://cache:65432"},
        ATOM_TIER_CONNECTOR_ARGS,
        "- [shared-url] LMCACHE_REMOTE_URL='lm://cache:65432': scheme 'lm' is not a Valkey/Redis "
        "server",
    ),
]


@pytest.mark.parametrize(
    ("env", "args", "expected"), [row[1:] for row in BAD_VALUES], ids=[row[0] for row in BAD_VALUES]
)
def test_bad_value_stops_the_server_in_the_settings_phase(
    env: dict[str, str], args: list[str], expected: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = CpuVllmServer(
        tiny_model_dir,
        workdir=tmp_path,
        args=args,
        env={"ATOM_TIER_CPU_PLATFORM": "1", **env},
        startup_timeout=240,
    )
    try:
        with pytest.raises(ServerStartError):
            server.start()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 1
    log = server.log_text()
    lines = log.splitlines()
    assert "Traceback" not in log, log
    assert not [marker for marker in PAST_THE_SETTINGS_PHASE if marker in log], log
    # One block, the last thing the server printed: the problem, then its fix.
    assert log.count(HEADER) == 1, log
    block = lines[next(i for i, line in enumerate(lines) if line.startswith(HEADER)) :]
    assert expected in block[1], block
    assert block[2].startswith("  fix: "), block
    assert all(line.startswith(("- ", "  fix: ")) for line in block[1:]), block
