"""The `atom-tier` command: doctor, settings, and the tools later modules add."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from atom_tier import __version__
from atom_tier.settings import SettingsError

Runner = Callable[[argparse.Namespace], int]


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    from atom_tier.cli import doctor

    parser = sub.add_parser("doctor", help="preflight report: what is active, what is wrong, fixes")
    doctor.add_arguments(parser)
    parser.set_defaults(runner=doctor.run)


def _add_settings(sub: argparse._SubParsersAction) -> None:
    from atom_tier.cli import settings_table

    parser = sub.add_parser("settings", help="list every setting, its variables and default")
    settings_table.add_arguments(parser)
    parser.set_defaults(runner=settings_table.run)


def _add_replay(sub: argparse._SubParsersAction) -> None:
    from atom_tier.replay import cli as replay

    parser = sub.add_parser(
        "replay", help="replay kv-cache-tester traces against a running server: TTFT, hits"
    )
    replay.add_arguments(parser)
    parser.set_defaults(runner=replay.run)


def _add_gen_traces(sub: argparse._SubParsersAction) -> None:
    from atom_tier.replay import cli as replay

    parser = sub.add_parser(
        "gen-traces", help="write synthetic agentic traces in kv-cache-tester format"
    )
    replay.add_generate_arguments(parser)
    parser.set_defaults(runner=replay.run_generate)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from atom_tier.plan import cli as plan

    parser = sub.add_parser(
        "plan", help="simulate DRAM/NVMe tier sizes over a trace workload: which pay off"
    )
    plan.add_arguments(parser)
    parser.set_defaults(runner=plan.run)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_doctor,
    _add_settings,
    _add_replay,
    _add_gen_traces,
    _add_plan,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atom-tier", description="vLLM on AMD Instinct GPUs, fast with no hand tuning."
    )
    parser.add_argument("--version", action="version", version=f"atom-tier {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:2] == ["replay", "compare"]:
        # `replay`'s first positional is a trace folder, so argparse cannot also hold a
        # `compare` sub-command under it: the comparison has its own parser.
        from atom_tier.replay import compare

        return compare.main(words[2:])
    args = build_parser().parse_args(words)
    runner: Runner = args.runner
    try:
        return runner(args)
    except SettingsError as exc:
        print(f"atom-tier: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
