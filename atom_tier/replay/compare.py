"""`atom-tier replay compare RUN_DIR...`: finished runs side by side, with their ratios.

Reads what each run wrote (``summary.json``, ``periods.csv``, ``requests.csv``), never the
server: the table's figures are the runs' summaries, formatted. The first run is the reference
of the ratio rows (the arm without tiers, in a tiers-off/on comparison). Writes the table as
Markdown, overlaid plots (``compare_plots``) and one self-contained HTML page with the plots
embedded, so a report can be mailed or attached as one file.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from atom_tier.replay.metrics import tier_order
from atom_tier.replay.report import PERIODS_CSV, REQUESTS_CSV, SUMMARY_JSON
from atom_tier.replay.traces import ReplayInputError

TABLE_MD = "compare.md"
REPORT_HTML = "compare.html"
SHOWN_TIERS = ("device", "host", "disk")  # always shown, so tiers-off runs show their zeros
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Row:
    """One table row: its title, the summary key it shows and how (ms, %, count)."""

    title: str
    key: str
    unit: str = ""


ROWS = (
    Row("requests completed", "requests_completed"),
    Row("requests failed", "requests_failed"),
    Row("TTFT p50 (ms)", "ttft_p50_s", "ms"),
    Row("TTFT p95 (ms)", "ttft_p95_s", "ms"),
    Row("input tokens/s", "input_tokens_per_s"),
    Row("hit rate (server)", "hit_rate", "%"),
)


@dataclass(frozen=True)
class RunData:
    """One finished run's files."""

    folder: Path
    label: str
    summary: dict[str, Any]
    periods: list[dict[str, str]]
    requests: list[dict[str, str]]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_run(folder: Path) -> RunData:
    """A run folder written by ``atom-tier replay``; one clear error when it is not one."""
    folder = Path(folder)
    path = folder / SUMMARY_JSON
    if not folder.is_dir():
        raise ReplayInputError(f"run folder {folder} does not exist")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReplayInputError(
            f"{folder} is not a finished replay run: it has no {SUMMARY_JSON}"
        ) from None
    except (OSError, ValueError) as error:
        raise ReplayInputError(f"{path} cannot be read: {error}") from None
    if not isinstance(data, dict) or "requests_completed" not in data:
        raise ReplayInputError(f"{path} is not a replay summary")
    try:
        periods, requests = _csv_rows(folder / PERIODS_CSV), _csv_rows(folder / REQUESTS_CSV)
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise ReplayInputError(f"{folder}: a CSV file cannot be read: {error}") from None
    label = str(data.get("label") or folder.name)
    return RunData(folder, label, data, periods, requests)


def load_runs(folders: Sequence[Path]) -> list[RunData]:
    """The runs in the order given; labels made unique with the folder name when they clash."""
    if not folders:
        raise ReplayInputError("no run folder to compare")
    runs = [load_run(f) for f in folders]
    labels = [r.label for r in runs]
    if len(set(labels)) == len(labels):
        return runs
    return [
        RunData(r.folder, f"{r.label} ({r.folder.name})", r.summary, r.periods, r.requests)
        for r in runs
    ]


def number(value: Any) -> float | None:
    """A summary figure as a float; None when missing or not a number (JSON null = NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def tiers_of(runs: Sequence[RunData]) -> list[str]:
    """device, host and disk, then any other tier a run reported hits from."""
    used = {t for r in runs for t, v in (r.summary.get("hit_tokens") or {}).items() if v}
    return [t for t in tier_order(list(used)) if t in used or t in SHOWN_TIERS]


def figures(
    runs: Sequence[RunData], extra_rows: Sequence[Row] = ()
) -> list[tuple[Row, list[float | None]]]:
    """Every table row with its raw value per run (None: not measured)."""
    table = [(row, [number(r.summary.get(row.key)) for r in runs]) for row in ROWS]
    for tier in tiers_of(runs):
        values = [number((r.summary.get("hit_tokens") or {}).get(tier, 0.0)) for r in runs]
        table.append((Row(f"hit tokens: {tier}", f"hit_tokens.{tier}"), values))
    table.append(
        (Row("prefilled tokens", "computed_tokens"), [number(r.summary.get("computed_tokens"))
                                                       for r in runs])
    )  # fmt: skip
    table += [(row, [number(r.summary.get(row.key)) for r in runs]) for row in extra_rows]
    return table


def ratios(runs: Sequence[RunData]) -> list[tuple[Row, list[float | None]]]:
    """Each run against the first: TTFT first ÷ this (over 1: faster), requests this ÷ first."""

    def get(run: RunData, key: str) -> float | None:
        return number(run.summary.get(key))

    first = runs[0]
    rows = []
    for key, name in (("ttft_p50_s", "median"), ("ttft_p95_s", "p95")):
        row = Row(f"{name} TTFT: first ÷ this", f"ratio.{key}", "x")
        rows.append((row, [_ratio(get(first, key), get(r, key)) for r in runs]))
    row = Row("requests completed: this ÷ first", "ratio.requests_completed", "x")
    key = "requests_completed"
    rows.append((row, [_ratio(get(r, key), get(first, key)) for r in runs]))
    return rows


def cell(value: float | None, unit: str) -> str:
    """How the table shows one figure."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:,.0f}"
    if unit == "%":
        return f"{value:.1%}"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.1f}"


def table_cells(runs: Sequence[RunData], extra_rows: Sequence[Row] = ()) -> list[list[str]]:
    """Header row, then one row per figure and per ratio, as the table shows them."""
    cells = [["", *[r.label for r in runs]]]
    for row, values in [*figures(runs, extra_rows), *ratios(runs)]:
        cells.append([row.title, *[cell(v, row.unit) for v in values]])
    return cells


def markdown_table(runs: Sequence[RunData], extra_rows: Sequence[Row] = ()) -> list[str]:
    """The table as Markdown with padded columns (readable as plain text too)."""
    cells = table_cells(runs, extra_rows)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(cells[0]), rule, *[line(row) for row in cells[1:]]]


def html_report(
    runs: Sequence[RunData], plots: Sequence[Path], extra_rows: Sequence[Row] = ()
) -> str:
    """One self-contained page: the table, the runs' folders and the PNGs inlined."""
    esc = html.escape
    cells = table_cells(runs, extra_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in cells[0])
    body = "".join(
        "<tr><th>" + esc(row[0]) + "</th>" + "".join(f"<td>{esc(c)}</td>" for c in row[1:])
        + "</tr>"
        for row in cells[1:]
    )  # fmt: skip
    items = "".join(
        f"<li>{esc(r.label)}: <code>{esc(str(r.folder))}</code>, "
        f"{esc(str(r.summary.get('model', '?')))} at {esc(str(r.summary.get('server', '?')))}, "
        f"started {esc(str(r.summary.get('started_at', '?')))}</li>"
        for r in runs
    )
    images = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(p.name)}'
        "</figcaption></figure>"
        for p in plots
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}td{text-align:right}"
        "tbody th{text-align:left;font-weight:normal}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>atom-tier replay compare</title><style>{style}</style></head><body>"
        f"<h1>atom-tier replay compare</h1><p>Generated {datetime.now():%Y-%m-%d %H:%M}. "
        "Ratios are against the first run.</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<h2>Runs</h2><ul>{items}</ul>{images}</body></html>\n"
    )


def write_report(
    runs: Sequence[RunData],
    out_dir: Path,
    *,
    plots: bool = True,
    extra_rows: Sequence[Row] = (),
) -> list[Path]:
    """compare.md, the overlaid PNGs (when matplotlib is there) and compare.html."""
    from atom_tier.replay.compare_plots import write_compare_plots

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        table = out_dir / TABLE_MD
        table.write_text("\n".join(markdown_table(runs, extra_rows)) + "\n")
        pngs = write_compare_plots(runs, out_dir) if plots else []
        page = out_dir / REPORT_HTML
        page.write_text(html_report(runs, pngs, extra_rows))
    except OSError as error:
        raise ReplayInputError(f"cannot write the comparison into {out_dir}: {error}") from None
    return [table, *pngs, page]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``atom-tier replay compare``."""
    parser.description = (
        "Compare finished `atom-tier replay` runs side by side: TTFT, requests, hit tokens "
        "by tier and ratios against the first run, overlaid plots and one HTML report."
    )
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders")
    parser.add_argument(
        "--out", type=Path, help="report folder (default: replay-results/compare-<time>)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def run(args: argparse.Namespace) -> int:
    """``atom-tier replay compare``; exit code 0, or 2 with one message on bad input."""
    try:
        runs = load_runs(args.runs)
        out = args.out or Path("replay-results") / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
        files = write_report(runs, out, plots=not args.no_plots)
    except ReplayInputError as error:
        print(f"atom-tier replay compare: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n".join(markdown_table(runs)))
    print("report: " + ", ".join(str(p) for p in files))
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="atom-tier replay compare")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))
