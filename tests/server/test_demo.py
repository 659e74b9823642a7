"""`make demo` as a user runs it (the Makefile calls `python -m atom_tier.devtools.demo`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server


def test_demo_serves_reloads_from_dram_and_stops_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "atom_tier.devtools.demo",
            "--workdir",
            str(tmp_path),
            "--replay-seconds",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "[demo] answer :" in out
    assert "[demo] tokens loaded from the DRAM tier: 512" in out
    assert "greedy answer identical to the cold run: True" in out
    assert "features (platform cpu)" in out and "[on ] kv_connector" in out
    assert "atom-tier 0.1.0 doctor" in out and "Result:" in out
    assert "processes left: none" in out
    assert "replay exit status 0" in out
    assert (tmp_path / "replay").is_dir() and any((tmp_path / "replay").rglob("*.csv"))
