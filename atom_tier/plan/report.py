"""A sweep as a table, a JSON document and a PNG (hit rate and prefill saved vs DRAM size)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atom_tier.plan.deployment import PlanInputError
from atom_tier.plan.simulator import DEVICE, DRAM, NVME, SHARED
from atom_tier.plan.sweep import CLOSE_POINTS, Sweep, Verdict
from atom_tier.replay.plots import plotting_available

TIERS = (DEVICE, DRAM, NVME, SHARED)
# Working set over time: this many points in the JSON.
SERIES_POINTS = 50


def _m(tokens: float) -> str:
    return f"{tokens / 1e6:,.2f}M"


def format_table(sweep: Sweep, verdict: Verdict) -> str:
    workload = sweep.workload
    lines = [
        f"deployment: {sweep.deployment.explanation}",
        f"workload: {len(workload.requests):,} requests, {_m(sweep.prompt_tokens)} prompt "
        f"tokens, {workload.sessions_started} sessions ({workload.sessions_truncated} cut at "
        f"the max context, {workload.sessions_skipped} skipped), chunk "
        f"{workload.chunk_tokens} tokens, KV block {workload.block_tokens} tokens",
        f"ceiling (infinite cache): {sweep.ceiling:.1%} hit rate; working set peak "
        f"{_m(sweep.working_set_peak_tokens)} tokens "
        f"({sweep.working_set_peak_tokens * sweep.deployment.kv_bytes_per_token / 2**30:,.1f} "
        f"GiB of KV); device KV cache {sweep.deployment.device_kv_tokens:,} tokens",
        "",
        f"{'DRAM GiB':>9} {'NVMe GiB':>9} {'device':>9} {'DRAM':>9} {'NVMe':>9} "
        f"{'shared':>9} {'prefill':>9} {'hit rate':>9}",
    ]
    for config in sweep.configurations:
        tiers = config.result.tiers
        cells = [_m(tiers[t].hit_tokens) if t in tiers else "-" for t in TIERS]
        lines.append(
            f"{config.dram_gb:>9g} {config.nvme_gb:>9g} "
            + " ".join(f"{c:>9}" for c in cells)
            + f" {_m(config.result.prefill_tokens):>9} {config.result.hit_rate:>9.1%}"
        )
    chosen = verdict.chosen
    lines += [
        "",
        f"regime: {verdict.regime}. Best hit rate {verdict.best.result.hit_rate:.1%} "
        f"(DRAM {verdict.best.dram_gb:g} GiB, NVMe {verdict.best.nvme_gb:g} GiB); smallest "
        f"within {CLOSE_POINTS:g} points: DRAM {chosen.dram_gb:g} GiB, NVMe "
        f"{chosen.nvme_gb:g} GiB ({chosen.result.hit_rate:.1%}).",
        "settings: " + " ".join(f"{k}={v}" for k, v in verdict.settings.items()),
    ]
    return "\n".join(lines)


def to_json(sweep: Sweep, verdict: Verdict, inputs: dict[str, Any]) -> dict[str, Any]:
    workload = sweep.workload
    step = max(1, len(workload.requests) // SERIES_POINTS)
    series = [
        {"time_s": workload.requests[i].time, "request": i, "tokens": sweep.working_set_tokens[i]}
        for i in range(0, len(workload.requests), step)
    ]
    return {
        "inputs": inputs,
        "deployment": sweep.deployment.explanation,
        "requests": len(workload.requests),
        "prompt_tokens": sweep.prompt_tokens,
        "ceiling": {"hit_tokens": sweep.ceiling_tokens, "hit_rate": sweep.ceiling},
        "working_set": {"peak_tokens": sweep.working_set_peak_tokens, "over_time": series},
        "configurations": [
            {
                "dram_gb": c.dram_gb,
                "nvme_gb": c.nvme_gb,
                "shared_gb": c.shared_gb,
                "hit_tokens": {name: t.hit_tokens for name, t in c.result.tiers.items()},
                "evicted_chunks": {name: t.evicted for name, t in c.result.tiers.items()},
                "prefill_tokens": c.result.prefill_tokens,
                "hit_rate": c.result.hit_rate,
            }
            for c in sweep.configurations
        ],
        "regime": verdict.regime,
        "recommended": {
            "dram_gb": verdict.chosen.dram_gb,
            "nvme_gb": verdict.chosen.nvme_gb,
            "settings": verdict.settings,
        },
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as error:
        raise PlanInputError(f"--json {path}: cannot write: {error}") from None


def write_png(path: Path, sweep: Sweep) -> bool:
    """Hit rate and prefill tokens saved vs DRAM size, one line per NVMe size; False when
    matplotlib is missing."""
    if not plotting_available():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    no_tier = next((c for c in sweep.configurations if c.dram_gb == 0 and c.nvme_gb == 0), None)
    figure, (rate_axes, saved_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    for nvme in sorted({c.nvme_gb for c in sweep.configurations}):
        line = [c for c in sweep.configurations if c.nvme_gb == nvme]
        sizes = [c.dram_gb for c in line]
        rate_axes.plot(
            sizes, [100 * c.result.hit_rate for c in line], "-o", label=f"NVMe {nvme:g} GiB"
        )
        if no_tier is not None:
            base = no_tier.result.prefill_tokens
            saved = [(base - c.result.prefill_tokens) / 1e6 for c in line]
            saved_axes.plot(sizes, saved, "-o", label=f"NVMe {nvme:g} GiB")
    rate_axes.axhline(100 * sweep.ceiling, color="grey", linestyle="--", label="ceiling")
    rate_axes.set_xlabel("DRAM tier (GiB)")
    rate_axes.set_ylabel("hit rate (%)")
    saved_axes.set_xlabel("DRAM tier (GiB)")
    saved_axes.set_ylabel("prefill tokens saved vs no tier (millions)")
    for axes in (rate_axes, saved_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"atom-tier plan: {len(sweep.workload.requests):,} requests")
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise PlanInputError(f"--png {path}: cannot write: {error}") from None
    finally:
        plt.close(figure)
    return True
