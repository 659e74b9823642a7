"""What a replay run produced, as text (progress line, end table) and files (CSV, JSON).

Columns are fixed (the known cache tiers always appear, in the same order) so that the files
of different runs — the arms of a comparison — line up column for column.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from atom_tier.replay.metrics import CacheCounters, tier_order
from atom_tier.replay.runner import PeriodRecord, ReplayResult, Snapshot
from atom_tier.replay.scheduler import percentile, spread

REQUESTS_CSV = "requests.csv"
PERIODS_CSV = "periods.csv"
SUMMARY_JSON = "summary.json"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def format_progress(snap: Snapshot) -> str:
    """One status line: time, users, requests, recent TTFT p50/p95 and throughput."""
    ttfts = list(snap.recent_ttfts)
    return (
        f"[{snap.elapsed:5.0f}/{snap.duration:.0f} s] users {snap.users}/{snap.target_users}"
        f"  done {snap.completed}  failed {snap.failed}"
        f"  TTFT p50 {_ms(percentile(ttfts, 50))} p95 {_ms(percentile(ttfts, 95))}"
        f"  in {snap.recent_input_tps:,.0f} tok/s  out {snap.recent_output_tps:,.1f} tok/s"
    )


def _hit_tokens(cache: CacheCounters) -> dict[str, float]:
    return {tier: cache.hits.get(tier, 0.0) for tier in tier_order(list(cache.hits))}


def endpoint_summaries(result: ReplayResult) -> dict[str, dict[str, Any]]:
    """Per endpoint: requests it completed and failed, its median TTFT and its own cache
    counters over the run (hit tokens by tier, prefilled tokens)."""
    figures: dict[str, dict[str, Any]] = {}
    for url in result.endpoints:
        mine = [r for r in result.records if r.endpoint == url]
        done = [r.ttft for r in mine if r.ok and r.ttft is not None]
        cache = result.endpoint_cache.get(url, CacheCounters())
        figures[url] = {
            "requests_completed": len(done),
            "requests_failed": len(mine) - len(done),
            "ttft_p50_s": percentile(done, 50),
            "hit_tokens": _hit_tokens(cache),
            "computed_tokens": cache.computed,
        }
    return figures


def summary(result: ReplayResult) -> dict[str, Any]:
    """The run's figures as plain data (the end table, summary.json, the three-arm bench)."""
    done = result.completed
    ttfts = [r.ttft for r in done if r.ttft is not None]
    avg, p50, p95, top = spread(ttfts)
    elapsed = result.elapsed or 1.0
    cache = result.cache
    prompt_total = cache.hit_total + cache.computed
    failures = [r for r in result.records if not r.ok]
    return {
        "label": result.options.label,
        "server": ", ".join(result.endpoints) or result.server.base_url,
        "model": result.server.model,
        "started_at": result.started_at.isoformat(timespec="seconds"),
        "elapsed_s": round(result.elapsed, 3),
        "requests_completed": len(done),
        "requests_failed": len(failures),
        "first_error": failures[0].error if failures else None,
        "ttft_avg_s": avg,
        "ttft_p50_s": p50,
        "ttft_p95_s": p95,
        "ttft_max_s": top,
        "input_tokens_per_s": sum(r.input_tokens for r in done) / elapsed,
        "output_tokens_per_s": sum(r.output_tokens for r in done) / elapsed,
        "sessions_started": result.sessions_started,
        "sessions_finished": result.sessions_finished,
        "sessions_truncated": result.sessions_truncated,
        "sessions_skipped": result.sessions_skipped,
        "warm_prefix_tokens": result.warm_prefix_tokens,
        "max_users_reached": max((p.users for p in result.periods), default=0),
        "cache_metrics_available": cache.available,
        "hit_tokens": _hit_tokens(cache),
        "computed_tokens": cache.computed,
        "hit_rate": (cache.hit_total / prompt_total) if prompt_total else math.nan,
        "token_scale": result.token_scale,
        "routing": result.routing,
        "endpoints": endpoint_summaries(result),
        "options": asdict(result.options),
        "machine": f"{platform.node()} {platform.machine()} {platform.system()}",
    }


def format_table(result: ReplayResult) -> str:
    """The end-of-run table."""
    s = summary(result)
    lines = [
        f"Replay '{s['label']}' against {s['server']} (model {s['model']}), "
        f"{s['elapsed_s']:.0f} s, token scale {s['token_scale']:g}, "
        f"warm prefix {s['warm_prefix_tokens']:,} tokens",
        f"  requests completed      {s['requests_completed']}",
        f"  requests failed         {s['requests_failed']}",
        f"  sessions                started {s['sessions_started']}, finished "
        f"{s['sessions_finished']}, truncated {s['sessions_truncated']}, "
        f"skipped {s['sessions_skipped']}",
        f"  TTFT avg / p50          {_ms(s['ttft_avg_s'])} / {_ms(s['ttft_p50_s'])}",
        f"  TTFT p95 / max          {_ms(s['ttft_p95_s'])} / {_ms(s['ttft_max_s'])}",
        f"  input tokens/s          {s['input_tokens_per_s']:,.1f}",
        f"  output tokens/s         {s['output_tokens_per_s']:,.1f}",
    ]
    if s["cache_metrics_available"]:
        tiers = ", ".join(
            f"{tier} {value:,.0f}" for tier, value in s["hit_tokens"].items() if value
        )
        rate = s["hit_rate"]
        lines.append(f"  server hit tokens       {tiers or 'none'}")
        lines.append(
            f"  server prefilled tokens {s['computed_tokens']:,.0f}"
            + ("" if math.isnan(rate) else f"  (hit rate {rate:.1%})")
        )
    else:
        lines.append("  server hit tokens       not available (no vLLM cache counters on /metrics)")
    if len(s["endpoints"]) > 1:
        lines.append(f"  routing                 {s['routing']}")
        for url, e in s["endpoints"].items():
            tiers = ", ".join(f"{t} {v:,.0f}" for t, v in e["hit_tokens"].items() if v)
            lines.append(
                f"  {url:<23} {e['requests_completed']} done, {e['requests_failed']} failed,"
                f" TTFT p50 {_ms(e['ttft_p50_s'])}, hit tokens {tiers or 'none'}"
            )
    if s["first_error"]:
        lines.append(f"  first error             {s['first_error']}")
    return "\n".join(lines)


def write_requests_csv(result: ReplayResult, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "user",
                "session",
                "cycle",
                "request",
                "start_s",
                "ttft_s",
                "latency_s",
                "input_tokens",
                "output_tokens",
                "ok",
                "error",
                "endpoint",
            ]
        )
        for r in result.records:
            writer.writerow(
                [
                    r.user,
                    r.session_id,
                    r.cycle,
                    r.index,
                    f"{r.start:.4f}",
                    "" if r.ttft is None else f"{r.ttft:.4f}",
                    f"{r.latency:.4f}",
                    r.input_tokens,
                    r.output_tokens,
                    int(r.ok),
                    r.error or "",
                    r.endpoint,
                ]
            )


def _period_row(period: PeriodRecord, tiers: list[str]) -> list[str | int]:
    done = [r for r in period.requests if r.ok]
    ttfts = [r.ttft for r in done if r.ttft is not None]
    span = max(period.end - period.start, 1e-9)
    stats = [f"{v:.4f}" if not math.isnan(v) else "" for v in spread(ttfts)]
    cache: CacheCounters = period.cache
    return [
        period.index,
        f"{period.start:.3f}",
        f"{period.end:.3f}",
        period.users,
        period.target_users,
        len(done),
        len(period.requests) - len(done),
        *stats,
        f"{sum(r.input_tokens for r in done) / span:.2f}",
        f"{sum(r.output_tokens for r in done) / span:.2f}",
        *[f"{cache.hits.get(t, 0.0):.0f}" for t in tiers],
        f"{cache.computed:.0f}",
    ]


def write_periods_csv(result: ReplayResult, path: Path) -> None:
    seen = {t for p in result.periods for t in p.cache.hits}
    tiers = tier_order(list(seen))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "period",
                "start_s",
                "end_s",
                "users",
                "target_users",
                "completed",
                "failed",
                "ttft_avg_s",
                "ttft_p50_s",
                "ttft_p95_s",
                "ttft_max_s",
                "input_tokens_per_s",
                "output_tokens_per_s",
                *[f"hit_tokens_{t}" for t in tiers],
                "computed_tokens",
            ]
        )
        for period in result.periods:
            writer.writerow(_period_row(period, tiers))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_summary_json(result: ReplayResult, path: Path) -> None:
    path.write_text(json.dumps(_json_safe(summary(result)), indent=2, default=str) + "\n")


def write_outputs(result: ReplayResult, out_dir: Path) -> list[Path]:
    """The CSV and JSON files of a run, in ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / REQUESTS_CSV, out_dir / PERIODS_CSV, out_dir / SUMMARY_JSON]
    write_requests_csv(result, paths[0])
    write_periods_csv(result, paths[1])
    write_summary_json(result, paths[2])
    return paths
