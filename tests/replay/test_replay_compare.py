"""`atom-tier replay compare` on run folders written by the replay's own writer.

The runs are built from records (what a run against a server collects) and written with
``write_results``; the comparison must show exactly what each run's summary.json says.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from atom_tier.cli import main as atom_tier
from atom_tier.replay.cli import write_results
from atom_tier.replay.client import ServerInfo
from atom_tier.replay.compare import REPORT_HTML, TABLE_MD, load_runs, markdown_table
from atom_tier.replay.compare_plots import HITS_COMPARE_PNG, TTFT_COMPARE_PNG
from atom_tier.replay.metrics import CacheCounters
from atom_tier.replay.plots import MISSING_NOTE
from atom_tier.replay.report import SUMMARY_JSON
from atom_tier.replay.runner import PeriodRecord, ReplayOptions, ReplayResult, RequestRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(folder: Path, label: str, ttfts: list[float], hits: dict[str, float]) -> Path:
    records = [
        RequestRecord(user=1, session_id="t", cycle=0, index=i, start=float(i), ttft=ttft,
                      latency=ttft + 0.1, input_tokens=500, output_tokens=8, error=None)
        for i, ttft in enumerate(ttfts)
    ]  # fmt: skip
    half = len(records) // 2
    result = ReplayResult(
        server=ServerInfo("http://127.0.0.1:1", "tiny", 1024, None),
        options=ReplayOptions(duration=20.0, period=10.0, label=label),
        token_scale=1 / 16,
        started_at=datetime(2026, 11, 23, tzinfo=timezone.utc),
        elapsed=20.0,
        records=records,
        sessions_started=3,
    )
    cache = CacheCounters(hits, 4000.0 - sum(hits.values()), True)
    result.periods = [
        PeriodRecord(0, 0.0, 10.0, 2, 2, tuple(records[:half]), cache),
        PeriodRecord(1, 10.0, 20.0, 2, 2, tuple(records[half:]), CacheCounters({}, 0, True)),
    ]
    result.cache = cache
    write_results(result, folder, plots=False)
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        _run(tmp_path / "off", "tiers off", [0.8, 1.2, 0.9, 2.0, 1.1], {"device": 300.0}),
        _run(tmp_path / "on", "tiers on", [0.2, 0.3, 0.25, 0.5, 0.1, 0.4],
             {"device": 300.0, "host": 2100.0, "disk": 640.0}),
    ]  # fmt: skip


class _Page(HTMLParser):
    """Table cells (row by row) and image sources of the report."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _md_rows(path: Path) -> dict[str, list[str]]:
    lines = path.read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in cells if not row[0].startswith("-")}


def test_table_and_report_show_the_runs_summaries(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert atom_tier(["replay", "compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    off, on = (json.loads((r / SUMMARY_JSON).read_text()) for r in runs)

    table = _md_rows(out / TABLE_MD)
    assert table[""] == ["tiers off", "tiers on"]
    assert table["requests completed"] == [str(off["requests_completed"]), "6"]
    assert table["TTFT p50 (ms)"] == [f"{s['ttft_p50_s'] * 1000:,.0f}" for s in (off, on)]
    assert table["TTFT p95 (ms)"] == [f"{s['ttft_p95_s'] * 1000:,.0f}" for s in (off, on)]
    assert table["hit tokens: device"] == ["300", "300"]
    assert table["hit tokens: host"] == ["0", f"{on['hit_tokens']['host']:,.0f}"]
    assert table["hit tokens: disk"] == ["0", "640"]
    assert table["prefilled tokens"] == [f"{off['computed_tokens']:,.0f}", "960"]
    assert table["hit rate (server)"] == [f"{s['hit_rate']:.1%}" for s in (off, on)]
    assert table["median TTFT: first ÷ this"] == [
        "1.00", f"{off['ttft_p50_s'] / on['ttft_p50_s']:.2f}"]  # fmt: skip
    assert table["p95 TTFT: first ÷ this"][1] == f"{off['ttft_p95_s'] / on['ttft_p95_s']:.2f}"
    assert table["requests completed: this ÷ first"] == ["1.00", f"{6 / 5:.2f}"]
    # What is printed is the same table.
    assert "\n".join(markdown_table(load_runs(runs))) in printed

    page = _Page()
    page.feed((out / REPORT_HTML).read_text())
    html_rows = {row[0]: row[1:] for row in page.rows}
    assert html_rows == table
    assert len(page.images) == 2
    for source, name in zip(page.images, (TTFT_COMPARE_PNG, HITS_COMPARE_PNG), strict=True):
        assert source.startswith("data:image/png;base64,")
        embedded = base64.b64decode(source.split(",", 1)[1])
        assert embedded == (out / name).read_bytes()
        assert embedded.startswith(PNG_SIGNATURE) and len(embedded) > 5000


def test_same_labels_are_told_apart_by_folder(runs: list[Path], tmp_path: Path) -> None:
    again = _run(tmp_path / "again", "tiers on", [0.3], {"host": 10.0})
    labels = [r.label for r in load_runs([runs[1], again])]
    assert labels == ["tiers on (on)", "tiers on (again)"]


def test_a_folder_that_is_not_a_run_is_one_clear_error(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert atom_tier(["replay", "compare", str(runs[0]), str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"atom-tier replay compare: error: {empty} is not a finished replay run: "
        f"it has no {SUMMARY_JSON}"
    ]


def test_without_matplotlib_the_report_has_no_plots(
    runs: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "report"
    assert atom_tier(["replay", "compare", *map(str, runs), "--out", str(out)]) == 0
    assert MISSING_NOTE in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [REPORT_HTML, TABLE_MD]
    page = _Page()
    page.feed((out / REPORT_HTML).read_text())
    assert page.images == [] and len(page.rows) > 10
