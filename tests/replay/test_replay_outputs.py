"""End-of-run outputs: the table, per-request and per-period CSV, summary JSON, PNG plots.

The run results here are built from records directly (what a run against a server collects);
the end-to-end test against a real CPU vLLM server checks the same files from a real run.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from atom_tier.replay.cli import write_results
from atom_tier.replay.client import ServerInfo
from atom_tier.replay.metrics import KNOWN_TIERS, CacheCounters
from atom_tier.replay.plots import HITS_PNG, MISSING_NOTE, TTFT_PNG
from atom_tier.replay.report import (
    PERIODS_CSV,
    REQUESTS_CSV,
    SUMMARY_JSON,
    format_progress,
    format_table,
    summary,
)
from atom_tier.replay.runner import (
    PeriodRecord,
    ReplayOptions,
    ReplayResult,
    RequestRecord,
    Snapshot,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(start: float, ttft: float | None, error: str | None = None) -> RequestRecord:
    return RequestRecord(
        user=1, session_id="t/agent_1", cycle=0, index=int(start), start=start, ttft=ttft,
        latency=(ttft or 0.0) + 0.5, input_tokens=1000, output_tokens=20, error=error,
    )  # fmt: skip


def _result() -> ReplayResult:
    records = [_record(0.0, 0.10), _record(1.0, 0.30), _record(6.0, 0.20),
               _record(7.0, None, "HTTP 400: Token id 999 is out of vocabulary")]  # fmt: skip
    result = ReplayResult(
        server=ServerInfo("http://127.0.0.1:1", "tiny", 4096, None),
        options=ReplayOptions(duration=10.0, period=5.0, label="arm-x"),
        token_scale=1 / 32,
        started_at=datetime(2026, 11, 23, tzinfo=timezone.utc),
        elapsed=10.0,
        records=records,
        sessions_started=2,
        sessions_finished=1,
    )
    result.periods = [
        PeriodRecord(0, 0.0, 5.0, 2, 2, tuple(records[:2]),
                     CacheCounters({"device": 900.0, "host": 128.0}, 400.0, True)),
        PeriodRecord(1, 5.0, 10.0, 1, 2, tuple(records[2:]),
                     CacheCounters({"device": 100.0, "disk": 64.0}, 100.0, True)),
    ]  # fmt: skip
    result.cache = CacheCounters({"device": 1000.0, "host": 128.0, "disk": 64.0}, 500.0, True)
    return result


def test_summary_figures() -> None:
    s = summary(_result())
    assert s["requests_completed"] == 3 and s["requests_failed"] == 1
    assert s["ttft_p50_s"] == pytest.approx(0.2)
    assert s["ttft_max_s"] == pytest.approx(0.3)
    assert s["input_tokens_per_s"] == pytest.approx(300.0)
    assert s["output_tokens_per_s"] == pytest.approx(6.0)
    assert s["hit_tokens"]["host"] == 128.0
    assert s["hit_rate"] == pytest.approx(1192 / 1692)
    assert "out of vocabulary" in s["first_error"]


def test_table_shows_every_figure() -> None:
    table = format_table(_result())
    for text in ("requests completed      3", "requests failed         1", "TTFT avg / p50",
                 "200 ms", "device 1,000", "host 128", "disk 64", "hit rate 70.4%",
                 "input tokens/s", "output tokens/s", "first error"):  # fmt: skip
        assert text in table, text


def test_progress_line() -> None:
    line = format_progress(Snapshot(12.0, 60.0, 3, 4, 10, 1, (0.1, 0.2, 0.3), 1234.0, 5.5))
    assert "[   12/60 s] users 3/4" in line
    assert "done 10  failed 1" in line and "p50 200 ms" in line and "1,234 tok/s" in line


def test_files_are_written_and_well_formed(tmp_path: Path) -> None:
    files = write_results(_result(), tmp_path / "out")
    names = {p.name for p in files}
    assert names == {REQUESTS_CSV, PERIODS_CSV, SUMMARY_JSON, TTFT_PNG, HITS_PNG}

    with (tmp_path / "out" / REQUESTS_CSV).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert rows[0]["session"] == "t/agent_1" and float(rows[0]["ttft_s"]) == 0.1
    assert rows[3]["ok"] == "0" and rows[3]["ttft_s"] == "" and "vocabulary" in rows[3]["error"]

    with (tmp_path / "out" / PERIODS_CSV).open() as handle:
        periods = list(csv.DictReader(handle))
    assert len(periods) == 2
    # Every known tier has a column in every run, so runs line up column for column.
    for tier in KNOWN_TIERS:
        assert f"hit_tokens_{tier}" in periods[0]
    assert periods[0]["hit_tokens_host"] == "128" and periods[1]["hit_tokens_disk"] == "64"
    assert periods[1]["completed"] == "1" and periods[1]["failed"] == "1"
    assert float(periods[0]["ttft_p50_s"]) == pytest.approx(0.2)

    data = json.loads((tmp_path / "out" / SUMMARY_JSON).read_text())
    assert data["label"] == "arm-x" and data["requests_completed"] == 3
    assert data["options"]["period"] == 5.0

    for png in (TTFT_PNG, HITS_PNG):
        content = (tmp_path / "out" / png).read_bytes()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5000


def test_nan_figures_are_null_in_json(tmp_path: Path) -> None:
    result = _result()
    result.records = []
    write_results(result, tmp_path, plots=False)
    data = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert data["ttft_p50_s"] is None and data["requests_completed"] == 0
    assert math.isnan(summary(result)["ttft_p50_s"])


def test_without_matplotlib_plots_are_skipped_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `None` in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    files = write_results(_result(), tmp_path)
    assert {p.name for p in files} == {REQUESTS_CSV, PERIODS_CSV, SUMMARY_JSON}
    assert MISSING_NOTE in capsys.readouterr().out
    assert not (tmp_path / TTFT_PNG).exists()
