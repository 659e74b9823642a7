"""`atom-tier replay` against several endpoints: routing modes, per-endpoint records and counts.

The endpoints are two real HTTP servers on 127.0.0.1 (tests/replay/stand_in_server.py, stand-ins
for two vLLM replicas: the client speaks plain HTTP, and two CPU vLLM servers would take
minutes). What each server itself received is the reference the replay's files are held to.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from stand_in_server import StandInReplica

from atom_tier.replay import cli
from atom_tier.replay.client import parse_replay_request_id
from atom_tier.replay.report import REQUESTS_CSV, SUMMARY_JSON
from atom_tier.replay.routing import Router
from atom_tier.replay.synth import SynthSpec, write_traces
from atom_tier.replay.traces import ReplayInputError, load_traces


@pytest.fixture
def replicas() -> Iterator[tuple[StandInReplica, StandInReplica]]:
    with StandInReplica() as first, StandInReplica() as second:
        yield first, second


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    write_traces(folder, SynthSpec(count=8, seed=5, requests=5, subagent_rate=0.6))
    return folder


def _replay(traces: Path, out: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = [str(traces), "--out", str(out), "--token-scale", "0.0625", "--think-scale", "0",
            "--max-output-tokens", "4", "--vocab-size", "500", "--duration", "60",
            "--period", "1", "--no-plots", "--quiet", *extra]  # fmt: skip
    return cli.run(parser.parse_args(argv))


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / REQUESTS_CSV).open() as handle:
        return list(csv.DictReader(handle))


def _check_records_match_servers(out: Path, replicas: tuple[StandInReplica, ...]) -> None:
    """Every request a server answered is in the CSV under its URL, and the summary's
    per-endpoint counts and hit tokens are what each server counted."""
    rows = _rows(out)
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["requests_failed"] == 0
    for replica in replicas:
        mine = [r for r in rows if r["endpoint"] == replica.base_url]
        assert len(mine) == len(replica.prompts)
        assert sorted(int(r["input_tokens"]) for r in mine) == sorted(
            len(p) for p in replica.prompts
        )
        figures = summary["endpoints"][replica.base_url]
        assert figures["requests_completed"] == len(replica.prompts)
        assert figures["hit_tokens"]["device"] == replica.cached_tokens
        assert figures["computed_tokens"] == replica.computed_tokens
    assert summary["hit_tokens"]["device"] == sum(r.cached_tokens for r in replicas)
    assert summary["server"] == ", ".join(r.base_url for r in replicas)


def test_round_robin_alternates_requests(
    replicas: tuple[StandInReplica, StandInReplica],
    traces: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = replicas
    out = tmp_path / "out"
    # --url (the single-endpoint option) and --endpoint add to the same list.
    code = _replay(traces, out, "--url", first.base_url, "--endpoint", second.base_url,
                   "--routing", "round-robin", "--max-users", "3",
                   "--start-users", "3")  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "routing                 round-robin" in printed.out
    _check_records_match_servers(out, replicas)
    total = load_traces(traces).request_count
    assert len(first.prompts) + len(second.prompts) == total
    assert abs(len(first.prompts) - len(second.prompts)) <= 1
    # Sessions are split: round-robin ignores which conversation a request belongs to.
    by_session: dict[str, set[str]] = {}
    for row in _rows(out):
        by_session.setdefault(row["session"], set()).add(row["endpoint"])
    assert any(len(endpoints) == 2 for endpoints in by_session.values())


def test_sticky_keeps_a_conversation_and_its_subagents_on_one_endpoint(
    replicas: tuple[StandInReplica, StandInReplica], traces: Path, tmp_path: Path
) -> None:
    first, second = replicas
    out = tmp_path / "out"
    code = _replay(traces, out, "--endpoint", first.base_url, "--endpoint", second.base_url,
                   "--routing", "sticky", "--max-users", "3", "--start-users", "3")  # fmt: skip
    assert code == 0
    _check_records_match_servers(out, replicas)
    rows = _rows(out)
    by_trace: dict[str, set[str]] = {}
    for row in rows:
        by_trace.setdefault(row["session"].split("/")[0], set()).add(row["endpoint"])
    assert all(len(endpoints) == 1 for endpoints in by_trace.values()), by_trace
    assert any("/" in row["session"] for row in rows)  # sub-agents were replayed
    assert first.prompts and second.prompts  # conversations spread over both


def test_random_routing_is_reproducible_from_the_seed(
    replicas: tuple[StandInReplica, StandInReplica], traces: Path, tmp_path: Path
) -> None:
    first, second = replicas
    endpoints = ["--endpoint", first.base_url, "--endpoint", second.base_url]
    # One user: requests go out in one order, so the seeded draws meet the same requests.
    single = ("--routing", "random", "--max-users", "1", "--seed", "3")
    assert _replay(traces, tmp_path / "a", *endpoints, *single) == 0
    assert _replay(traces, tmp_path / "b", *endpoints, *single) == 0
    runs = [[(r["session"], r["request"], r["endpoint"]) for r in _rows(tmp_path / n)]
            for n in ("a", "b")]  # fmt: skip
    assert runs[0] == runs[1]
    assert {r[2] for r in runs[0]} == {first.base_url, second.base_url}
    assert len(first.prompts) + len(second.prompts) == 2 * len(runs[0])


def test_sticky_choice_does_not_depend_on_the_process(traces: Path) -> None:
    # Python's own str hash changes per process; the sticky hash must not.
    code = (
        "import sys; from atom_tier.replay.routing import Router\n"
        "from atom_tier.replay.traces import load_traces\n"
        "r = Router('sticky', ['a', 'b', 'c'], seed=0)\n"
        "print([r.pick(s, 0) for s in load_traces(sys.argv[1]).sessions])"
    )
    picks = {
        subprocess.run(
            [sys.executable, "-c", code, str(traces)],
            env={**os.environ, "PYTHONHASHSEED": str(salt)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in (1, 2)
    }
    here = Router("sticky", ["a", "b", "c"], seed=0)
    assert picks == {str([here.pick(s, 0) for s in load_traces(traces).sessions]) + "\n"}


def test_an_endpoint_given_twice_is_refused() -> None:
    with pytest.raises(ReplayInputError, match="given twice"):
        Router("round-robin", ["http://h:1", "http://h:1"], seed=0)


def test_a_replica_serving_another_model_is_one_clear_error(
    traces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StandInReplica("tiny") as first, StandInReplica("other") as second:
        code = _replay(traces, tmp_path / "out", "--endpoint", first.base_url,
                       "--endpoint", second.base_url)  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"server {second.base_url} does not serve model 'tiny'" in err
    assert "Traceback" not in err


def test_each_request_names_its_record_in_x_request_id(
    replicas: tuple[StandInReplica, StandInReplica], traces: Path, tmp_path: Path
) -> None:
    """The id vLLM logs and hands the connector says which replay request it is."""
    first, _ = replicas
    out = tmp_path / "out"
    assert _replay(traces, out, "--url", first.base_url, "--max-users", "2") == 0
    parsed = [parse_replay_request_id(f"cmpl-{i}-0-1a2b3c4d") for i in first.request_ids]
    sent = [ids for ids in parsed if ids is not None]
    assert len(sent) == len(first.prompts)
    recorded = [(r["session"], int(r["cycle"]), int(r["request"])) for r in _rows(out)]
    assert sorted(sent) == sorted(recorded)
    assert len(set(recorded)) == len(recorded)


def test_a_vllm_request_id_not_from_the_replay_parses_to_none() -> None:
    assert parse_replay_request_id("cmpl-3f1e9a7c0b2d4e6f-0-1a2b3c4d") is None
    assert parse_replay_request_id("cmpl-trace_0367:1:12-0-1a2b3c4d") == ("trace_0367", 1, 12)
