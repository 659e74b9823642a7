"""`atom-tier replay` against kv-cache-tester's trace_replay_tester.py on the same three arms.

The published MI300X runs used kv-cache-tester's client; bench/three_arms.py uses atom-tier's.
This bench starts bench/three_arms.py's servers (same arm setup: A prefix cache only, B + DRAM
tier, C + DRAM + NVMe; same pool, tiers and bench model, here with a BPE tokenizer, see
bench/kvct_setup.py) once per client and arm, always fresh, and replays the same scaled
traces with the same options through each client:

    kvct        kv-cache-tester's client (a subprocess: its own Python path for plotly/pandas)
    atom        `atom-tier replay` with its defaults (warm prefix 0.5, as kv-cache-tester)
    atom-nowarm `atom-tier replay --warm-prefix-pct 0` (atom-tier before the warm prefix)

Arms run one after the other, the clients of one arm back to back, so load changes on the
shared machine hit the clients of an arm alike. The server's own counters (/metrics before and
after each client) give every client's hit tokens by tier the same way; TTFT and request
counts come from each client's files, counted over the same window (requests finished within
--duration of the client's first request).

    .venv/bin/python bench/kvct_compare.py --kvct-pythonpath /tmp/kvct/deps [--duration 75]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from kvct_setup import build_bpe_model, write_scaled_traces
from three_arms import ARMS, arm_server
from three_arms_setup import build_bench_model, machine

from atom_tier.devtools.cpu_server import CpuVllmServer, ServerStartError, parse_metrics
from atom_tier.replay.cli import replay_against
from atom_tier.replay.metrics import CacheCounters
from atom_tier.replay.report import summary
from atom_tier.replay.runner import ReplayOptions
from atom_tier.replay.scheduler import percentile
from atom_tier.replay.traces import ReplayInputError, load_traces

REPO = Path(__file__).resolve().parent.parent
CLIENTS = ("kvct", "atom", "atom-nowarm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--kvct-dir", type=Path, default=Path("/work/shared/kv-cache-tester"))
    parser.add_argument("--kvct-python", default=sys.executable)
    parser.add_argument("--kvct-pythonpath", default="", help="where its plotly/pandas are")
    parser.add_argument("--limit-traces", type=int, default=40)
    parser.add_argument("--token-scale", type=float, default=1 / 16)
    parser.add_argument("--duration", type=int, default=75, help="seconds per client and arm")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--think-scale", type=float, default=0.05)
    parser.add_argument("--max-think", type=float, default=20.0, help="after scaling")
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument("--max-context", type=int, default=7680, help="input tokens")
    parser.add_argument("--warm-prefix-pct", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-blocks", type=int, default=72)
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--dram-gb", type=float, default=0.04)
    parser.add_argument("--nvme-gb", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--arms", default="ABC")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    # Outside the checkout: it holds copies of the traces, which never go into the repository.
    parser.add_argument("--out", type=Path, default=Path("/tmp/atom-tier-kvct-compare"))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no servers: rebuild --out's report from its results.json and saved client files",
    )
    return parser.parse_args(argv)


def kvct_command(
    opts: argparse.Namespace, url: str, traces: Path, out: Path, model: Path
) -> list[str]:
    """kv-cache-tester's options matching the atom-tier run's (its cap on think times applies
    before scaling, atom-tier's after: --max-delay = --max-think / --think-scale)."""
    return [
        opts.kvct_python, str(opts.kvct_dir / "trace_replay_tester.py"),
        "--api-endpoint", url, "--trace-directory", str(traces), "--output-dir", str(out),
        "--start-users", str(opts.users), "--max-users", str(opts.users), "--recycle",
        "--test-duration", str(opts.duration), "--assessment-period", "15",
        "--max-context", str(opts.max_context), "--time-scale", f"{opts.think_scale:g}",
        "--max-delay", f"{opts.max_think / opts.think_scale:g}",
        "--warm-prefix-pct", f"{opts.warm_prefix_pct:g}", "--seed", str(opts.seed),
        "--tokenizer", str(model), "--chunk-size", str(max(1, round(64 * opts.token_scale))),
        "--max-ttft", "1000", "--skip-graphs", "--no-color",
    ]  # fmt: skip


def client_pauses(log: Path) -> list[tuple[float, float]]:
    """Spans (epoch s) in which kv-cache-tester built a text pool. It builds its tool-result pool
    on first use, inside its event loop, mid-run: no response is read until it is done, so the
    TTFT of every request waiting meanwhile includes the pause."""
    spans: list[tuple[float, float]] = []
    start = None
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("[") and ("Pre-generating" in line or "pool ready" in line):
            stamp = datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if "Pre-generating" in line:
                start = stamp
            elif start is not None:
                spans.append((start, stamp))
                start = None
    return spans


def kvct_figures(out: Path, duration: float) -> dict[str, Any]:
    """TTFT and counts from kv-cache-tester's detailed_results.csv and user_lifecycle.csv, and
    the TTFT of the requests that did not wait through one of its pauses (its kvct.log)."""
    path = out / "detailed_results.csv"
    if not path.exists():
        return {"error": f"no {path}"}
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    t0 = min(float(r["request_start_time"]) for r in rows)
    inside = [r for r in rows if float(r["request_complete_time"]) - t0 <= duration]
    done = [r for r in inside if r["success"] == "True"]
    ttfts = [float(r["ttft"]) for r in done]
    pauses = [(a, b) for a, b in client_pauses(out.parent / "kvct.log") if b > t0]

    def waited(r: dict[str, str]) -> bool:
        sent = float(r["request_start_time"])
        return any(sent < b and sent + float(r["ttft"]) > a for a, b in pauses)

    clear = [float(r["ttft"]) for r in done if not waited(r)]
    events: dict[str, int] = {}
    lifecycle = out / "user_lifecycle.csv"
    if lifecycle.exists():
        with lifecycle.open() as handle:
            for row in csv.DictReader(handle):
                events[row["event_type"]] = events.get(row["event_type"], 0) + 1
    return {
        "requests_completed": len(done),
        "requests_failed": len(inside) - len(done),
        "requests_after_window": len(rows) - len(inside),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_avg_s": sum(ttfts) / len(ttfts) if ttfts else float("nan"),
        "output_tokens_avg": sum(int(r["output_tokens_actual"]) for r in done) / max(1, len(done)),
        "sessions_finished": events.get("completed", 0),
        "sessions_truncated": events.get("truncated", 0),
        "client_pause_s": sum(b - max(a, t0) for a, b in pauses),
        "requests_in_pause": len(done) - len(clear),
        "ttft_p50_clear_s": percentile(clear, 50),
        "ttft_p95_clear_s": percentile(clear, 95),
    }


def server_figures(before: str, after: str) -> dict[str, Any]:
    """Hit tokens by tier, prefilled tokens and prompt tokens per request, from /metrics."""
    cache = CacheCounters.from_text(after).minus(CacheCounters.from_text(before))
    first, last = parse_metrics(before), parse_metrics(after)

    def total(name: str) -> float:
        return sum(v for k, v in last.items() if k.split("{")[0] == name) - sum(
            v for k, v in first.items() if k.split("{")[0] == name
        )

    requests = total("vllm:request_success_total")
    prompt = cache.hit_total + cache.computed
    return {
        "hit_tokens": dict(cache.hits),
        "computed_tokens": cache.computed,
        "hit_rate": cache.hit_total / prompt if prompt else float("nan"),
        "server_requests": requests,
        "prompt_tokens_per_request": prompt / requests if requests else float("nan"),
    }


def run_client(
    client: str, arm: str, opts: argparse.Namespace, paths: dict[str, Path]
) -> dict[str, Any]:
    workdir = opts.out / f"{arm}-{client}"
    shutil.rmtree(workdir, ignore_errors=True)
    nvme_dir = workdir / "nvme"
    nvme_dir.mkdir(parents=True)
    args, env = arm_server(arm, opts, nvme_dir)
    server = CpuVllmServer(paths["model"], workdir=workdir, args=args, env=env, name="server")
    print(f"\n== arm {arm} ({ARMS[arm]}), client {client}", flush=True)
    try:
        server.start()
    except ServerStartError as error:
        return {"error": str(error).splitlines()[0]}
    load = [os.getloadavg()[0]]
    try:
        before = httpx.get(server.base_url + "/metrics").text
        if client == "kvct":
            figures = _kvct(opts, server.base_url, paths, workdir)
        else:
            figures = _atom(opts, server.base_url, paths, client == "atom")
        after = httpx.get(server.base_url + "/metrics").text
    finally:
        load.append(os.getloadavg()[0])
        server.stop()
        shutil.rmtree(nvme_dir, ignore_errors=True)
    result = {**figures, **server_figures(before, after), "load_average": sum(load) / 2}
    (workdir / "figures.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


def _kvct(
    opts: argparse.Namespace, url: str, paths: dict[str, Path], workdir: Path
) -> dict[str, Any]:
    out = workdir / "kvct-results"
    command = kvct_command(opts, url, paths["traces"], out, paths["model"])
    env = {**os.environ, "PYTHONPATH": opts.kvct_pythonpath}
    # The server is a child too but still running: only the finished client is in this delta.
    cpu_before = _children_cpu()
    with (workdir / "kvct.log").open("wb") as log:
        code = subprocess.run(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=opts.duration + 240).returncode  # fmt: skip
    figures = {**kvct_figures(out, opts.duration), "client_cpu_s": _children_cpu() - cpu_before}
    return figures if code == 0 else {**figures, "error": f"exit {code}, see {workdir}/kvct.log"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _atom(opts: argparse.Namespace, url: str, paths: dict[str, Path], warm: bool) -> dict[str, Any]:
    options = ReplayOptions(
        duration=opts.duration, start_users=opts.users, max_users=opts.users, period=15.0,
        think_scale=opts.think_scale, max_think=opts.max_think, recycle=True, seed=opts.seed,
        max_context=opts.max_context, warm_prefix_pct=opts.warm_prefix_pct if warm else 0.0,
    )  # fmt: skip
    sessions = load_traces(paths["traces"]).sessions
    cpu_before = time.process_time()  # this process runs the replay, the server is a child
    try:
        result = asyncio.run(replay_against(url, sessions, options, token_scale=1.0,
                                            max_output_tokens=opts.max_output_tokens))  # fmt: skip
    except ReplayInputError as error:
        return {"error": str(error)}
    s = summary(result)
    done = result.completed
    keys = ("requests_completed", "requests_failed", "ttft_p50_s", "ttft_p95_s", "ttft_avg_s",
            "sessions_finished", "sessions_truncated", "warm_prefix_tokens")  # fmt: skip
    average = sum(r.output_tokens for r in done) / max(1, len(done))
    cpu = time.process_time() - cpu_before
    return {**{k: s[k] for k in keys}, "output_tokens_avg": average, "client_cpu_s": cpu}


ROWS = (
    ("requests completed", "requests_completed", "{:,.0f}"),
    ("requests failed", "requests_failed", "{:,.0f}"),
    ("TTFT p50 (ms)", "ttft_p50_s", "ms"),
    ("TTFT p95 (ms)", "ttft_p95_s", "ms"),
    ("TTFT avg (ms)", "ttft_avg_s", "ms"),
    ("kvct: its text-pool pause in the run (s)", "client_pause_s", "{:.1f}"),
    ("kvct: requests waiting through it", "requests_in_pause", "{:,.0f}"),
    ("kvct: TTFT p50 / p95 of the others (ms)", "ttft_clear", "clear"),
    ("hit rate (server)", "hit_rate", "{:.1%}"),
    ("hit tokens device / host / disk", "hit_tokens", "tiers"),
    ("prefilled tokens", "computed_tokens", "{:,.0f}"),
    ("prompt tokens per request (server)", "prompt_tokens_per_request", "{:,.0f}"),
    ("output tokens per request", "output_tokens_avg", "{:.1f}"),
    ("sessions finished / truncated", "sessions", "sessions"),
    ("client CPU time (s, whole run)", "client_cpu_s", "{:.1f}"),
    ("load average (1 min, 2 CPUs)", "load_average", "{:.1f}"),
)


def _cell(r: dict[str, Any], key: str, form: str) -> str:
    if "error" in r and key not in r:
        return "not run"
    if form == "tiers":
        h = r.get("hit_tokens", {})
        return " / ".join(f"{h.get(t, 0):,.0f}" for t in ("device", "host", "disk"))
    if form == "clear":
        p50, p95 = r.get("ttft_p50_clear_s"), r.get("ttft_p95_clear_s")
        ok = isinstance(p50, float) and isinstance(p95, float)
        return f"{p50 * 1000:,.0f} / {p95 * 1000:,.0f}" if ok else "-"
    if form == "sessions":
        return f"{r.get('sessions_finished', 0)} / {r.get('sessions_truncated', 0)}"
    value = r.get(key)
    if not isinstance(value, (int, float)) or value != value:
        return "-"
    return f"{value * 1000:,.0f}" if form == "ms" else form.format(value)


def _ratio(results: dict[str, dict[str, Any]], a: str, b: str, key: str) -> str:
    x, y = results.get(a, {}).get(key), results.get(b, {}).get(key)
    ok = isinstance(x, (int, float)) and isinstance(y, (int, float)) and y
    return f"{x / y:.2f}" if ok else "-"


def report(
    opts: argparse.Namespace,
    results: dict[str, dict[str, dict[str, Any]]],
    preamble: list[str] | None = None,
) -> str:
    """The tables under ``preamble`` (default: this run's date, machine and command)."""
    clients = [c for c in CLIENTS if c in results]
    arms = [a for a in "ABC" if any(a in results[c] for c in clients)]
    head = [f"{c}: {a}" for a in arms for c in clients]
    lines = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, key, form in ROWS:
        cells = [_cell(results[c].get(a, {"error": ""}), key, form) for a in arms for c in clients]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | " + " | ".join(clients) + " |", "|---" * (len(clients) + 1) + "|"]
    ratios = (
        ("median TTFT A ÷ C", "A", "C", "ttft_p50_s"),
        ("median TTFT A ÷ C, kvct without the requests in its pause", "A", "C", "ttft_p50_clear_s"),
        ("median TTFT A ÷ B", "A", "B", "ttft_p50_s"),
        ("p95 TTFT C ÷ B", "C", "B", "ttft_p95_s"),
        ("completed requests C ÷ A", "C", "A", "requests_completed"),
    )
    for name, a, b, key in ratios:
        lines.append(
            f"| {name} | " + " | ".join(_ratio(results[c], a, b, key) for c in clients) + " |"
        )
    if preamble is None:
        command = " ".join(
            shlex.quote(x) for x in [".venv/bin/python", "bench/kvct_compare.py", *sys.argv[1:]]
        )
        ended = f"{datetime.datetime.now().astimezone():%H:%M %Z}"
        preamble = [f"Run {opts.started} to {ended} on {machine()}.", "", "```", command, "```", ""]
    return "\n".join([*preamble, *lines])


def report_again(opts: argparse.Namespace) -> str:
    """--report-only: the last run's tables again from its results.json and the clients' saved
    files (kv-cache-tester's figures recomputed), under that run's own date and command."""
    results = json.loads((opts.out / "results.json").read_text())
    for arm, figures in results.get("kvct", {}).items():
        again = kvct_figures(opts.out / f"{arm}-kvct" / "kvct-results", opts.duration)
        if "error" not in again:
            figures.update(again)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    preamble = (opts.out / "report.md").read_text().splitlines()[:6]
    return report(opts, results, preamble)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.report_only:
        body = report_again(opts)
        (opts.out / "report.md").write_text(body + "\n")
        print(body)
        return 0
    opts.started = f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    opts.out.mkdir(parents=True, exist_ok=True)
    bench = build_bench_model(opts.out / f"bench-model-h{opts.hidden}-l{opts.layers}",
                              hidden=opts.hidden, layers=opts.layers)  # fmt: skip
    paths = {"model": build_bpe_model(bench, opts.out / "bench-model-bpe", opts.kvct_dir),
             "traces": opts.out / "traces-scaled"}  # fmt: skip
    ids = write_scaled_traces(opts.traces, paths["traces"], limit=opts.limit_traces,
                              seed=opts.seed, scale=opts.token_scale,
                              max_output=opts.max_output_tokens)  # fmt: skip
    print(f"machine: {machine()}\ntraces: {len(ids)} without sub-agents from {opts.traces}, "
          f"scaled × {opts.token_scale:g} into {paths['traces']}", flush=True)  # fmt: skip
    clients = [c for c in opts.clients.split(",") if c in CLIENTS]
    results: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in clients}
    for arm in [a for a in "ABC" if a in opts.arms.upper()]:
        for client in clients:
            started = time.monotonic()
            results[client][arm] = run_client(client, arm, opts, paths)
            print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    body = report(opts, results)
    (opts.out / "report.md").write_text(body + "\n")
    print("\n" + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
