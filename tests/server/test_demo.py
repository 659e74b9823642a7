"""`make demo` as a user runs it (the Makefile calls `python -m atom_tier.devtools.demo`).

Checks what the demo claims from the files it and its replays wrote: the evicted prompt
reloaded from the DRAM tier faster than it was computed cold, with the same answer;
conversations ran more than one turn; the tiers supplied prompt tokens; the tiers-on run beat
the tiers-off run on median TTFT; and the printed output fits one screen.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from atom_tier.devtools.demo import RESULT_JSON
from atom_tier.replay.compare import REPORT_HTML
from atom_tier.replay.compare_plots import HITS_COMPARE_PNG, TTFT_COMPARE_PNG
from atom_tier.replay.report import REQUESTS_CSV, SUMMARY_JSON

pytestmark = pytest.mark.server

SCREEN_LINES = 45


def _sessions_past_first_turn(run: Path) -> set[str]:
    with (run / REQUESTS_CSV).open() as handle:
        return {
            r["session"] for r in csv.DictReader(handle) if r["ok"] == "1" and r["request"] != "0"
        }


def test_demo_shows_tiers_winning_and_stops_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "atom_tier.devtools.demo", "--workdir", str(tmp_path),
         "--replay-seconds", "30"],
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert len(out.splitlines()) <= SCREEN_LINES, out
    assert out.count("processes left: none") == 2
    assert "[on ] kv_connector" in out

    probe = json.loads((tmp_path / RESULT_JSON).read_text())["tiers-on"]["probe"]
    assert probe["reloaded_tokens"] > 0 and probe["same_answer"] is True
    assert probe["reload_s"] < probe["cold_s"]

    off = json.loads((tmp_path / "tiers-off" / SUMMARY_JSON).read_text())
    on = json.loads((tmp_path / "tiers-on" / SUMMARY_JSON).read_text())
    for arm, summary in (("tiers-off", off), ("tiers-on", on)):
        assert summary["requests_failed"] == 0
        assert len(_sessions_past_first_turn(tmp_path / arm)) >= 3, arm
    assert off["hit_tokens"]["host"] == 0 and on["hit_tokens"]["host"] > 0
    assert on["ttft_p50_s"] < off["ttft_p50_s"]

    # The printed table is `replay compare`'s, and it names the plots at the end.
    assert "| TTFT p50 (ms)" in out and "median TTFT: first ÷ this" in out
    last = out.strip().splitlines()[-1]
    for name in (TTFT_COMPARE_PNG, HITS_COMPARE_PNG, REPORT_HTML):
        assert name in last and (tmp_path / "compare" / name).is_file()
