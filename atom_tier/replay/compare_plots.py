"""Overlaid PNGs of several replay runs: TTFT over time, and hit tokens by tier, per run.

Each run keeps one colour in both plots (in the order given). Without matplotlib no plot is
written and a note is printed, as for a single run's plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from atom_tier.replay.plots import MISSING_NOTE, plotting_available

if TYPE_CHECKING:
    from atom_tier.replay.compare import RunData

TTFT_COMPARE_PNG = "compare_ttft_over_time.png"
HITS_COMPARE_PNG = "compare_hit_tokens_by_tier.png"


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def write_compare_plots(runs: Sequence[RunData], out_dir: Path) -> list[Path]:
    """Both plots into ``out_dir``; [] (and a note) without matplotlib."""
    if not plotting_available():
        print(MISSING_NOTE)
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    from atom_tier.replay.compare import number, tiers_of

    colours = [f"C{i % 10}" for i in range(len(runs))]

    figure, axes = plt.subplots(figsize=(10, 4.8))
    for run, colour in zip(runs, colours, strict=True):
        points = [
            (_float(r.get("start_s")), _float(r.get("ttft_s")))
            for r in run.requests
            if r.get("ok") == "1"
        ]
        shown = [(x, y) for x, y in points if x is not None and y is not None]
        axes.scatter([p[0] for p in shown], [p[1] for p in shown], s=6, alpha=0.25, color=colour)
        line = []
        for period in run.periods:
            start, end = _float(period.get("start_s")), _float(period.get("end_s"))
            p50 = _float(period.get("ttft_p50_s"))
            if start is not None and end is not None and p50 is not None:
                line.append(((start + end) / 2, p50))
        axes.plot([p[0] for p in line], [p[1] for p in line], "-o", color=colour,
                  markersize=3, label=f"{run.label} (period p50)")  # fmt: skip
    axes.set_xlabel("time since start (s)")
    axes.set_ylabel("TTFT (s)")
    axes.set_yscale("log")
    axes.set_title("TTFT over time: requests (dots) and each period's median (line)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()
    ttft_path = out_dir / TTFT_COMPARE_PNG
    figure.savefig(ttft_path, dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(10, 4.8))
    groups = [*tiers_of(runs), "prefilled"]
    width = 0.8 / len(runs)
    for i, (run, colour) in enumerate(zip(runs, colours, strict=True)):
        hits = run.summary.get("hit_tokens") or {}
        values = [number(hits.get(t, 0.0)) or 0.0 for t in groups[:-1]]
        values.append(number(run.summary.get("computed_tokens")) or 0.0)
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(xs, values, width=width, color=colour, label=run.label)
    axes.set_xticks(range(len(groups)), [f"hit: {t}" for t in groups[:-1]] + ["prefilled"])
    axes.set_ylabel("prompt tokens over the run")
    axes.set_title("Prompt tokens by the tier that supplied them (server counters)")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.tight_layout()
    hits_path = out_dir / HITS_COMPARE_PNG
    figure.savefig(hits_path, dpi=100)
    plt.close(figure)
    return [ttft_path, hits_path]
