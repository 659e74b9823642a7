"""Trace loading: json and gz, sub-agents as their own sessions, and every bad-input error."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from replay_helpers import request, write_trace

from atom_tier.replay.synth import SynthSpec, synth_trace, write_traces
from atom_tier.replay.traces import ReplayInputError, load_traces


def _trace_with_subagents() -> dict:
    return {
        "id": "conv_1",
        "block_size": 64,
        "hash_id_scope": "local",
        "requests": [
            request([1, 2, 3]),
            request([1, 2, 3, 4], t=20.0, think=12.0),
            {
                "t": 30.0, "type": "subagent", "agent_id": "agent_007",
                "requests": [
                    request([10, 11]),
                    request([10, 11, 12], t=5.0, think=3.0),
                    {"t": 6.0, "type": "subagent", "agent_id": "agent_008",
                     "requests": [request([20])]},
                ],
            },
            request([1, 2, 3, 4, 5], t=60.0, think=None),
        ],
    }  # fmt: skip


def test_json_and_gz_load_the_same_sessions(tmp_path: Path) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    write_trace(plain / "conv.json", _trace_with_subagents())
    write_trace(packed / "conv.json.gz", _trace_with_subagents())
    a, b = load_traces(plain), load_traces(packed)
    assert [s.session_id for s in a.sessions] == [s.session_id for s in b.sessions]
    for x, y in zip(a.sessions, b.sessions, strict=True):
        assert [list(r.hash_ids) for r in x.requests] == [list(r.hash_ids) for r in y.requests]


def test_subagents_become_their_own_sessions(tmp_path: Path) -> None:
    write_trace(tmp_path / "conv.json", _trace_with_subagents())
    traces = load_traces(tmp_path)
    ids = [s.session_id for s in traces.sessions]
    assert ids == ["conv_1", "conv_1/agent_007", "conv_1/agent_007/agent_008"]
    parent, child, grandchild = traces.sessions
    # The parent keeps only its own requests, in order; sub-agents' requests are theirs.
    assert [list(r.hash_ids) for r in parent.requests] == [[1, 2, 3], [1, 2, 3, 4],
                                                           [1, 2, 3, 4, 5]]  # fmt: skip
    assert [list(r.hash_ids) for r in child.requests] == [[10, 11], [10, 11, 12]]
    assert [list(r.hash_ids) for r in grandchild.requests] == [[20]]
    assert not parent.is_subagent and child.is_subagent
    # All share the trace's id space (same scope), so equal ids mean equal blocks.
    assert {s.hash_scope for s in traces.sessions} == {"conv_1"}
    assert traces.trace_ids == ("conv_1",)
    assert traces.request_count == 6


def test_think_time_falls_back_to_the_gap_between_starts(tmp_path: Path) -> None:
    write_trace(tmp_path / "conv.json", _trace_with_subagents())
    parent = load_traces(tmp_path).sessions[0]
    assert parent.think_before(0) == 0.0
    assert parent.think_before(1) == 12.0  # recorded think_time
    assert parent.think_before(2) == 40.0  # no think_time: t 60 - t 20


def test_global_scope_shares_block_ids_across_traces(tmp_path: Path) -> None:
    for name in ("a", "b"):
        data = {"id": name, "hash_id_scope": "global", "requests": [request([1, 2])]}
        write_trace(tmp_path / f"{name}.json", data)
    assert {s.hash_scope for s in load_traces(tmp_path).sessions} == {"global"}


def test_synthetic_traces_load_with_their_subagents(synth_dir: Path) -> None:
    traces = load_traces(synth_dir)
    assert traces.files == 6
    subagents = [s for s in traces.sessions if s.is_subagent]
    assert subagents, "seed 3 with rate 0.5 writes sub-agents"
    for session in traces.sessions:
        for req in session.requests:
            assert len(req.hash_ids) == req.input_tokens // 64


def test_limit_picks_the_same_files_for_the_same_seed(synth_dir: Path) -> None:
    first = load_traces(synth_dir, limit=3, seed=11)
    again = load_traces(synth_dir, limit=3, seed=11)
    assert first.files == 3
    assert first.trace_ids == again.trace_ids
    others = {load_traces(synth_dir, limit=3, seed=s).trace_ids for s in range(8)}
    assert len(others) > 1, "the seed chooses which traces"


def test_synthetic_generator_is_deterministic_and_well_formed(tmp_path: Path) -> None:
    spec = SynthSpec(count=4, seed=9, subagent_rate=1.0)
    first = [p.read_bytes() for p in write_traces(tmp_path / "a", spec)]
    second = [p.read_bytes() for p in write_traces(tmp_path / "b", spec)]
    assert first == second
    trace = synth_trace(spec, 1)
    assert trace["block_size"] == 64 and trace["hash_id_scope"] == "local"
    sub = next(r for r in trace["requests"] if r["type"] == "subagent")
    parent_ids = {h for r in trace["requests"] if r["type"] != "subagent" for h in r["hash_ids"]}
    sub_ids = {h for r in sub["requests"] for h in r["hash_ids"]}
    assert sub["requests"][0]["t"] == 0.0
    assert parent_ids.isdisjoint(sub_ids), "a sub-agent shares the id space, not the blocks"
    assert trace["totals"]["subagent_count"] == 1


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.write_text("x"), "is not a directory"),
        (lambda d: d.mkdir(), "holds no trace files"),
        (lambda d: (d.mkdir(), (d / "t.json").write_text("{not json")), "cannot be read"),
        (lambda d: (d.mkdir(), (d / "t.json.gz").write_bytes(b"plain")), "cannot be read"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", [1, 2])), "not a JSON object"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"id": "x"})), "no 'requests'"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"requests": [{"in": 5}]})),
         "missing 'out'"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"requests": [
            {"in": 5, "out": 1, "hash_ids": ["a"]}]})), "'hash_ids' must be a list of integers"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"requests": [
            {"in": -5, "out": 1, "hash_ids": []}]})), "'in' must be a non-negative integer"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"block_size": 0, "requests": []})),
         "'block_size' must be a positive integer"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"requests": [
            {"type": "subagent"}]})), "sub-agent entry has no 'requests'"),
        (lambda d: (d.mkdir(), write_trace(d / "t.json", {"requests": []})), "hold no requests"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error_naming_the_file(
    tmp_path: Path, setup: object, expected: str
) -> None:
    folder = tmp_path / "traces"
    setup(folder)  # type: ignore[operator]
    with pytest.raises(ReplayInputError, match=expected) as raised:
        load_traces(folder)
    assert str(folder) in str(raised.value)


def test_a_truncated_gzip_file_is_named(tmp_path: Path) -> None:
    raw = gzip.compress(b'{"requests": []}' * 100)
    (tmp_path / "cut.json.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReplayInputError, match=r"cut\.json\.gz cannot be read"):
        load_traces(tmp_path)
