"""`atom-tier doctor` as a user runs it: the console script, text and JSON, exit statuses."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

DOCTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "environment", "settings_changed", "findings"],
    "properties": {
        "status": {"enum": ["ok", "info", "warning", "error"]},
        "environment": {
            "type": "object",
            "required": ["atom_tier", "torch", "torch_build", "vllm", "aiter"],
        },
        "settings_changed": {"type": "object"},
        "findings": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["level", "code", "message", "fix"],
                "properties": {
                    "level": {"enum": ["ok", "info", "warning", "error"]},
                    "code": {"type": "string", "minLength": 1},
                    "message": {"type": "string", "minLength": 1},
                    "fix": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
    },
}


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("atom-tier")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ATOM_TIER_", "LMCACHE_"))}
    return subprocess.run(
        [str(script), "doctor", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_doctor_json_validates_and_exits_zero_on_a_healthy_machine() -> None:
    result = doctor("--json", env={"PYTHONHASHSEED": "0"})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, DOCTOR_SCHEMA)
    assert data["environment"]["vllm"] == "0.32.0"
    assert data["environment"]["torch_build"] == "cpu"
    assert data["status"] in ("ok", "info")


def test_doctor_text_lists_checks_and_fixes(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = doctor(env={"PYTHONHASHSEED": "0", "ATOM_TIER_NVME_PATH": str(missing)})
    assert result.returncode == 1
    assert "ERROR nvme-path" in result.stdout
    text = " ".join(result.stdout.split())  # undo the report's line wrapping
    assert f"fix: mkdir -p {missing} (on the NVMe mount)" in text
    assert "Result: ERROR" in result.stdout


def test_doctor_exits_one_on_error_finding(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    result = doctor("--json", env={"PYTHONHASHSEED": "0", "ATOM_TIER_NVME_PATH": str(missing)})
    assert result.returncode == 1
    data = json.loads(result.stdout)
    jsonschema.validate(data, DOCTOR_SCHEMA)
    [nvme] = [f for f in data["findings"] if f["code"] == "nvme-path"]
    assert nvme["level"] == "error" and str(missing) in nvme["message"]
    assert data["settings_changed"] == {"nvme_path": str(missing)}


def test_doctor_reports_a_bad_setting_in_one_line() -> None:
    result = doctor(env={"ATOM_TIER_CONNECTOR": "redis"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "atom-tier: ATOM_TIER_CONNECTOR='redis' is not valid: expected one of native, lmcache, off"
    ]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_console_script_basics(flag: str) -> None:
    script = Path(sys.executable).with_name("atom-tier")
    result = subprocess.run([str(script), flag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "atom-tier" in result.stdout


def test_doctor_warns_when_the_automatic_nvme_cap_is_zero(
    mount_tmpfs: Callable[[str], Path],
) -> None:
    root = mount_tmpfs("8M")
    result = doctor(env={"PYTHONHASHSEED": "0", "ATOM_TIER_NVME_PATH": str(root)})
    assert result.returncode == 0, result.stderr
    assert "WARN  nvme-auto-capacity" in result.stdout
    text = " ".join(result.stdout.split())  # undo the report's line wrapping
    assert f"the automatic NVMe cap on {root} is 0 B" in text
    assert "freeing space cannot help: the filesystem is smaller than the reserve" in text
    assert "fix: point ATOM_TIER_NVME_PATH at a larger filesystem" in text
    assert "or set ATOM_TIER_NVME_GB to at most 0.00781 (8.00 MiB)" in text


def test_doctor_names_a_stale_shm_segment_and_deletes_nothing() -> None:
    segment = Path("/dev/shm") / f"psm_atomtiertest{secrets.token_hex(4)}"
    segment.write_bytes(b"x" * 2**20)
    try:
        result = doctor("--json", env={"PYTHONHASHSEED": "0"})
        data = json.loads(result.stdout)
        jsonschema.validate(data, DOCTOR_SCHEMA)
        [found] = [f for f in data["findings"] if f["code"] == "shm-stale-segments"]
        # Other stale segments may be there too (a killed server leaves vLLM's): the finding
        # sums them all, so only this segment's own entry in the fix is checked here; sizes
        # are checked on a private root in tests/preflight/test_probes.py.
        assert found["level"] == "info" and " of memory held (" in found["message"]
        assert f" {segment} " in found["fix"].split(" (")[0] + " "
        assert segment.exists()
        text = doctor(env={"PYTHONHASHSEED": "0"}).stdout
        assert "info  shm-stale-segments" in text and "fix: rm -f /dev/shm/psm_" in text
    finally:
        segment.unlink()


def test_doctor_refuses_a_chunk_size_of_partial_blocks() -> None:
    result = doctor("--json", env={"PYTHONHASHSEED": "0", "ATOM_TIER_CHUNK_TOKENS": "100"})
    assert result.returncode == 1
    data = json.loads(result.stdout)
    [chunk] = [f for f in data["findings"] if f["code"] == "chunk-tokens"]
    assert chunk["level"] == "error"
    # This machine's vLLM is the CPU build: its default block is 128 tokens.
    refused = "ATOM_TIER_CHUNK_TOKENS=100 is not a multiple of vLLM's KV block size, 128"
    assert refused in chunk["message"]
    assert chunk["fix"].startswith("set ATOM_TIER_CHUNK_TOKENS=128 ")


def test_doctor_warns_about_a_misspelled_setting() -> None:
    result = doctor(env={"PYTHONHASHSEED": "0", "ATOM_TIER_DRAM_G": "5"})
    assert result.returncode == 0, result.stdout
    assert "WARN  unknown-setting" in result.stdout
    assert "ATOM_TIER_DRAM_G is not an atom-tier setting" in result.stdout
    assert "fix: rename it to ATOM_TIER_DRAM_GB" in result.stdout


def test_text_report_never_splits_a_path_or_a_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """textwrap's defaults break at hyphens and inside long words: a path such as pytest's
    /tmp/pytest-of-root/... came out as "pytest-" and "of-root/..." on two lines."""
    from atom_tier.cli.doctor import render_text

    monkeypatch.setenv("COLUMNS", "100")
    path = "/tmp/pytest-of-root/pytest-155/test_doctor_warns_when_the_aut0/a-very-long-tmpfs-dir0"
    message = f"the automatic NVMe cap on {path} is 0 B and the long-winded reasons follow here"
    data = {
        "status": "warning",
        "environment": {
            "atom_tier": "0",
            "torch": None,
            "torch_build": "none",
            "vllm": None,
            "vllm_distribution": None,
            "aiter": [],
            "host_memory_available_gb": 1,
        },
        "settings_changed": {},
        "findings": [
            {
                "level": "warning",
                "code": "nvme-auto-capacity",
                "message": message,
                "fix": f"docker run --shm-size=2g -v {path}:{path} or point it elsewhere",
            },
        ],
    }
    lines = render_text(data).splitlines()
    assert sum(path in line for line in lines) == 2  # the message's and the fix's
    assert any("--shm-size=2g" in line for line in lines)
    assert " ".join(" ".join(lines).split()).count(f" {path} ") == 1
