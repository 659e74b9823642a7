"""PNG plots of a run: TTFT over time, and cache-hit tokens by tier per period.

matplotlib is an optional extra: without it the plots are skipped with a note, never an error.
Axes are labelled in fixed units and tiers keep fixed colours, so plots of different runs
(the arms of a comparison) read side by side.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from atom_tier.replay.metrics import tier_order
from atom_tier.replay.runner import ReplayResult
from atom_tier.replay.scheduler import spread

TTFT_PNG = "ttft_over_time.png"
HITS_PNG = "hit_tokens_by_tier.png"
MISSING_NOTE = "plots skipped: matplotlib is not installed (pip install matplotlib)"
_TIER_COLOURS = {
    "device": "tab:blue",
    "host": "tab:orange",
    "disk": "tab:green",
    "p2p": "tab:purple",
    "external_unspecified": "tab:brown",
    "computed": "lightgrey",
}


def plotting_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plots(result: ReplayResult, out_dir: Path) -> list[Path]:
    """Write both plots into ``out_dir``; returns their paths ([] without matplotlib)."""
    if not plotting_available():
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{result.options.label} — {result.server.model}, token scale {result.token_scale:g}"

    figure, axes = plt.subplots(figsize=(9, 4.5))
    done = [(r.start, r.ttft) for r in result.records if r.ok and r.ttft is not None]
    axes.scatter([d[0] for d in done], [d[1] for d in done], s=8, alpha=0.5, label="request")
    mids = [(p.start + p.end) / 2 for p in result.periods]
    stats = [
        spread([r.ttft for r in p.requests if r.ok and r.ttft is not None]) for p in result.periods
    ]
    axes.plot(mids, [s[1] for s in stats], "-o", color="black", label="period p50")
    axes.plot(mids, [s[2] for s in stats], "--o", color="tab:red", label="period p95")
    axes.set_xlabel("time since start (s)")
    axes.set_ylabel("TTFT (s)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    ttft_path = out_dir / TTFT_PNG
    figure.savefig(ttft_path, dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(9, 4.5))
    # device, host and disk always (the same legend in every arm), others only when used.
    used = {t for p in result.periods for t, v in p.cache.hits.items() if v}
    tiers = [t for t in tier_order(list(used)) if t in used or t in ("device", "host", "disk")]
    bottoms = [0.0] * len(result.periods)
    lefts = [p.start for p in result.periods]
    widths = [(p.end - p.start) * 0.9 for p in result.periods]
    series = [(t, [p.cache.hits.get(t, 0.0) for p in result.periods]) for t in tiers]
    series.append(("computed", [p.cache.computed for p in result.periods]))
    for name, values in series:
        axes.bar(
            lefts,
            values,
            width=widths,
            bottom=bottoms,
            align="edge",
            label=name,
            color=_TIER_COLOURS.get(name),
        )
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    axes.set_xlabel("time since start (s)")
    axes.set_ylabel("prompt tokens per period")
    axes.set_title(title + ("" if result.cache.available else " (server has no cache counters)"))
    axes.grid(alpha=0.3, axis="y")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    hits_path = out_dir / HITS_PNG
    figure.savefig(hits_path, dpi=100)
    plt.close(figure)
    return [ttft_path, hits_path]
