"""Command line of ``atom-tier replay`` and ``atom-tier gen-traces``.

The lead's CLI wires them: ``add_arguments``/``run`` for replay, ``add_generate_arguments``/
``run_generate`` for the synthetic trace generator. Both return exit code 2 with one clear
message (no traceback) on bad input: missing folder, malformed trace, unreachable server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from atom_tier.replay.client import ReplayClient
from atom_tier.replay.plots import MISSING_NOTE, plotting_available, write_plots
from atom_tier.replay.report import format_progress, format_table, write_outputs
from atom_tier.replay.routing import ROUTING_MODES
from atom_tier.replay.runner import ProgressCallback, Replay, ReplayOptions, ReplayResult, Snapshot
from atom_tier.replay.scheduler import TTFT_METRICS
from atom_tier.replay.synth import SynthSpec, write_traces
from atom_tier.replay.tokens import TokenMapper, check_scaling
from atom_tier.replay.traces import ReplayInputError, Session, load_traces

EXIT_BAD_INPUT = 2
DEFAULT_URL = "http://127.0.0.1:8000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``atom-tier replay``."""
    parser.description = (
        "Replay kv-cache-tester agentic traces against an OpenAI-compatible server "
        "(block-exact prefix reuse, closed-loop users) and report TTFT, throughput and the "
        "server's cache hits per tier."
    )
    parser.epilog = (
        "`atom-tier replay compare RUN_DIR...` puts finished runs side by side "
        "(see `atom-tier replay compare --help`)."
    )
    parser.add_argument("traces", type=Path, help="folder of trace files (*.json, *.json.gz)")
    parser.add_argument(
        "--endpoint",
        "--url",
        dest="endpoints",
        action="append",
        metavar="URL",
        help=f"server base URL (default {DEFAULT_URL}); repeat it for several replicas of "
        "one model, which --routing shares the requests among",
    )
    parser.add_argument(
        "--routing",
        choices=ROUTING_MODES,
        default="round-robin",
        help="with several endpoints: round-robin per request, sticky per conversation "
        "(its sub-agents included; stable hash of the trace id), or random per request "
        "(from --seed)",
    )
    parser.add_argument("--model", help="served model name (default: the first listed)")
    parser.add_argument("--duration", type=float, default=120.0, help="run length, seconds")
    parser.add_argument("--start-users", type=int, default=1, help="users at the start")
    parser.add_argument("--max-users", type=int, default=4, help="most concurrent users")
    parser.add_argument(
        "--ttft-target",
        type=float,
        metavar="SECONDS",
        help="add users only while the period's TTFT stays under this "
        "(default: add one per period up to --max-users)",
    )
    parser.add_argument(
        "--ttft-metric",
        choices=TTFT_METRICS,
        default="p95",
        help="TTFT statistic compared with --ttft-target",
    )
    parser.add_argument("--ramp-step", type=int, default=1, help="users added per period")
    parser.add_argument("--period", type=float, default=10.0, help="assessment period, s")
    parser.add_argument(
        "--think-scale",
        "--time-scale",
        dest="think_scale",
        type=float,
        default=1.0,
        help="multiply recorded think times (0.1 = ten times faster users); "
        "--time-scale is kv-cache-tester's name for it",
    )
    parser.add_argument(
        "--max-think",
        type=float,
        default=60.0,
        help="cap on one think time after scaling, s (negative: no cap); kv-cache-tester "
        "caps before scaling: its --max-delay D --time-scale S is --max-think D*S here",
    )
    parser.add_argument(
        "--token-scale",
        type=float,
        default=1.0,
        help="shrink every token length (context, blocks, output); "
        "1/32 turns 100K-token contexts into ~3K",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        help="longest prompt (input tokens after scaling): a session ends before its first "
        "longer request, as in kv-cache-tester; outputs are shortened to fit the server's "
        "max_model_len (default: the server's max_model_len)",
    )
    parser.add_argument(
        "--warm-prefix-pct",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="as kv-cache-tester's: every conversation starts with one canonical prefix "
        "shared by all, this share (0-1) of the largest tool_tokens + system_tokens among "
        "the traces; 0 turns it off",
    )
    parser.add_argument(
        "--max-output-tokens",
        type=int,
        default=1024,
        help="cap on output tokens per request after scaling",
    )
    parser.add_argument(
        "--recycle",
        action="store_true",
        help="start the session order over (as new conversations) when done",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of trace choice/order and of token content (same seed: "
        "same requests, so runs are comparable)",
    )
    parser.add_argument(
        "--limit-traces", type=int, metavar="N", help="use N trace files drawn with --seed"
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        help="token ids to use (default: from the model's config or server)",
    )
    parser.add_argument(
        "--out", type=Path, help="results folder (default: replay-results/<label>-<time>)"
    )
    parser.add_argument("--label", default="replay", help="run name in files and plots")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds before one request is given up",
    )
    parser.add_argument("--quiet", action="store_true", help="no live progress line")


class LiveProgress:
    """Progress on a terminal: one line rewritten every tick, kept at each period's end.
    Elsewhere (logs, CI) only the period lines are printed."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()

    def __call__(self, snap: Snapshot, period_closed: bool) -> None:
        line = format_progress(snap)
        if self.live:
            self.stream.write("\r" + line.ljust(110) + ("\n" if period_closed else ""))
        elif period_closed:
            self.stream.write(line + "\n")
        self.stream.flush()


async def replay_against(
    url: str | Sequence[str],
    sessions: Sequence[Session],
    options: ReplayOptions,
    *,
    token_scale: float,
    model: str | None = None,
    vocab_size: int | None = None,
    max_output_tokens: int | None = None,
    request_timeout: float = 600.0,
    on_progress: ProgressCallback | None = None,
    on_start: ProgressCallback | None = None,
) -> ReplayResult:
    """Run one replay against the server at ``url``, or against several (replicas of one
    model, shared by ``options.routing``); the API the bench scripts use."""
    urls = [url] if isinstance(url, str) else list(url)
    connections = options.max_users + 4
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                ReplayClient(u, timeout=request_timeout, connections=connections)
            )
            for u in urls
        ]
        info = await clients[0].server_info(model)
        # Every replica must serve the first one's model; the shortest context bounds requests.
        others = [await c.server_info(info.model) for c in clients[1:]]
        vocab = vocab_size if vocab_size is not None else await clients[0].vocab_size(info)
        lengths = [i.max_model_len for i in (info, *others) if i.max_model_len is not None]
        if options.max_context is None and lengths:
            options = ReplayOptions(**{**vars(options), "max_context": min(lengths)})
        model_len = min(lengths) if lengths else None
        mapper = TokenMapper(
            vocab_size=vocab,
            token_scale=token_scale,
            seed=options.seed,
            max_output_tokens=max_output_tokens,
        )
        replay = Replay(
            clients, info, mapper, sessions, options, on_progress, max_model_len=model_len
        )
        return await replay.run()


def _options(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(
        duration=args.duration,
        start_users=args.start_users,
        max_users=args.max_users,
        ttft_target=args.ttft_target,
        ttft_metric=args.ttft_metric,
        ramp_step=args.ramp_step,
        period=args.period,
        think_scale=args.think_scale,
        max_think=None if args.max_think < 0 else args.max_think,
        recycle=args.recycle,
        seed=args.seed,
        max_context=args.max_context,
        label=args.label,
        routing=args.routing,
        warm_prefix_pct=args.warm_prefix_pct,
    )


async def _replay(args: argparse.Namespace) -> int:
    options = _options(args)
    options.validate()
    check_scaling(args.token_scale, args.max_output_tokens)
    if args.vocab_size is not None and args.vocab_size < 2:
        raise ReplayInputError(f"--vocab-size must be at least 2, got {args.vocab_size}")
    traces = load_traces(args.traces, limit=args.limit_traces, seed=args.seed)
    subagents = sum(1 for s in traces.sessions if s.is_subagent)
    print(
        f"traces: {traces.files} files from {traces.folder}, {len(traces.sessions)} sessions "
        f"({subagents} sub-agents), {traces.request_count} requests"
    )
    progress = None if args.quiet else LiveProgress(sys.stdout)
    result = await replay_against(
        args.endpoints or [DEFAULT_URL],
        traces.sessions,
        options,
        token_scale=args.token_scale,
        model=args.model,
        vocab_size=args.vocab_size,
        max_output_tokens=args.max_output_tokens,
        request_timeout=args.request_timeout,
        on_progress=progress,
    )
    print(format_table(result))
    stamp = result.started_at.astimezone().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or Path("replay-results") / f"{options.label}-{stamp}"
    files = write_results(result, out_dir, plots=not args.no_plots)
    print("results: " + ", ".join(str(p) for p in files))
    return 0


def write_results(result: ReplayResult, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """CSV, JSON and (when matplotlib is there, else a printed note) PNG files of a run."""
    try:
        files = write_outputs(result, out_dir)
        if plots:
            if plotting_available():
                files += write_plots(result, out_dir)
            else:
                print(MISSING_NOTE)
    except OSError as error:
        raise ReplayInputError(f"cannot write results into {out_dir}: {error}") from None
    return files


def run(args: argparse.Namespace) -> int:
    """``atom-tier replay``; exit code 0, or 2 on bad input with one message on stderr."""
    try:
        return asyncio.run(_replay(args))
    except ReplayInputError as error:
        print(f"\natom-tier replay: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\natom-tier replay: interrupted", file=sys.stderr)
        return 130


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``atom-tier gen-traces``."""
    parser.description = (
        "Write synthetic agentic traces in the kv-cache-tester format (for tests and demos)."
    )
    defaults = SynthSpec()
    parser.add_argument("out", type=Path, help="folder to write the trace files into")
    parser.add_argument("--count", type=int, default=defaults.count, help="number of traces")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="generator seed")
    parser.add_argument(
        "--requests", type=int, default=defaults.requests, help="median requests per trace"
    )
    parser.add_argument(
        "--context-tokens",
        type=int,
        default=defaults.context_tokens,
        help="median input tokens of a trace's first request",
    )
    parser.add_argument(
        "--new-blocks",
        type=int,
        default=defaults.new_blocks,
        help="median new 64-token blocks per turn",
    )
    parser.add_argument(
        "--think-median",
        type=float,
        default=defaults.think_median,
        help="median think time between turns, s",
    )
    parser.add_argument(
        "--subagent-rate",
        type=float,
        default=defaults.subagent_rate,
        help="share of traces with a sub-agent",
    )
    parser.add_argument("--no-gzip", action="store_true", help="write .json, not .json.gz")


def run_generate(args: argparse.Namespace) -> int:
    """``atom-tier gen-traces``; exit code 0, or 2 with one message on bad input."""
    spec = SynthSpec(
        count=args.count,
        seed=args.seed,
        requests=args.requests,
        context_tokens=args.context_tokens,
        new_blocks=args.new_blocks,
        think_median=args.think_median,
        subagent_rate=args.subagent_rate,
        gzip=not args.no_gzip,
    )
    try:
        written = write_traces(args.out, spec)
    except ReplayInputError as error:
        print(f"atom-tier gen-traces: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {len(written)} synthetic traces into {args.out} ({datetime.now():%H:%M:%S})")
    return 0
