"""`atom-tier replay` drives a server the way kv-cache-tester's trace_replay_tester.py does.

Three rules the published runs depend on, each checked on what a real HTTP server received
(tests/replay/stand_in_server.py, a stand-in for a vLLM replica that records every request body
and, like vLLM, refuses a prompt plus max_tokens longer than its max_model_len):

- the warm prefix (kv-cache-tester's ``--warm-prefix-pct``, default 0.5): every conversation
  starts with one canonical prefix, that share of the largest ``tool_tokens + system_tokens``;
- max context: a session ends before its first request whose *input* is longer than
  ``--max-context``; the prompt is never cut, and the output does not count;
- output lengths: each request asks for the output its trace recorded (scaled, capped), with
  ``ignore_eos``, shortened only where the server's length would refuse it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from replay_helpers import request, write_trace
from stand_in_server import StandInReplica

from atom_tier.replay import cli
from atom_tier.replay.report import SUMMARY_JSON
from atom_tier.replay.tokens import TokenMapper, warm_prefix_trace_tokens
from atom_tier.replay.traces import ReplayInputError, load_traces


def _trace(name: str, first: int, *, tools: int, system: int, **extra: Any) -> dict[str, Any]:
    """A three-turn conversation whose block ids start at ``first`` (local scope)."""
    ids = list(range(first, first + 6))
    return {
        "id": name,
        "block_size": 64,
        "tool_tokens": tools,
        "system_tokens": system,
        "requests": [
            request(ids[:3], out=5),
            request(ids[:4], think=0.0, out=5),
            request(ids[:6], think=0.0, out=5),
        ],
        **extra,
    }


def _replay(traces: Path, out: Path, server: StandInReplica, *extra: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = [str(traces), "--endpoint", server.base_url, "--out", str(out),
            "--vocab-size", "5000", "--think-scale", "0", "--duration", "30",
            "--max-users", "1", "--period", "1", "--no-plots", "--quiet", *extra]  # fmt: skip
    assert cli.run(parser.parse_args(argv)) == 0
    summary: dict[str, Any] = json.loads((out / SUMMARY_JSON).read_text())
    return summary


def _common(x: list[int], y: list[int]) -> int:
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return n


@pytest.fixture
def three_traces(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    # Largest tool + system prefix among the traces: 100 + 60 = 160 tokens -> warm 80.
    write_trace(folder / "a.json", _trace("a", 1, tools=100, system=60))
    write_trace(folder / "b.json", _trace("b", 1, tools=40, system=20))
    sub = {"type": "subagent", "agent_id": "s", "tool_tokens": 900, "system_tokens": 900,
           "requests": [request([7, 8, 9], out=5)]}  # fmt: skip
    c = _trace("c", 1, tools=10, system=10)
    c["requests"].append(sub)
    write_trace(folder / "c.json", c)
    return folder


def test_every_conversation_starts_with_one_shared_prefix(
    three_traces: Path, tmp_path: Path
) -> None:
    with StandInReplica() as server:
        summary = _replay(three_traces, tmp_path / "out", server)
    # 0.5 x the largest top-level tool + system (160; the sub-agent's own 1800 not counted).
    assert summary["warm_prefix_tokens"] == 80
    assert summary["options"]["warm_prefix_pct"] == 0.5
    prompts = server.prompts
    assert len(prompts) == 10  # 3 traces x 3 turns + the sub-agent's one request
    canonical = prompts[0][:80]
    for prompt in prompts:
        assert prompt[:80] == canonical
    # The sessions are unrelated past the prefix (local block ids: same ids, other content).
    firsts = [p for p in prompts if len(p) == 3 * 64 + 10]
    assert len(firsts) == 4
    for other in firsts[1:]:
        assert _common(firsts[0], other) == 80
    # The server saw the later conversations' prefix as cache hits.
    assert summary["hit_tokens"]["device"] >= 3 * 80


def test_warm_prefix_zero_shares_nothing_across_conversations(
    three_traces: Path, tmp_path: Path
) -> None:
    with StandInReplica() as server:
        summary = _replay(three_traces, tmp_path / "out", server, "--warm-prefix-pct", "0")
    assert summary["warm_prefix_tokens"] == 0
    firsts = [p for p in server.prompts if len(p) == 3 * 64 + 10]
    assert len(firsts) == 4
    for other in firsts[1:]:
        assert _common(firsts[0], other) < 3  # at most a chance match of a token or two


def test_warm_prefix_scales_with_the_tokens(three_traces: Path, tmp_path: Path) -> None:
    with StandInReplica() as server:
        summary = _replay(three_traces, tmp_path / "out", server, "--token-scale", "0.25")
    assert summary["warm_prefix_tokens"] == 20
    assert len({tuple(p[:20]) for p in server.prompts}) == 1
    assert len({tuple(p[:21]) for p in server.prompts}) > 1


def test_a_compaction_that_drops_the_first_blocks_drops_the_prefix(tmp_path: Path) -> None:
    trace = _trace("a", 1, tools=200, system=56)  # warm prefix 128 tokens = 2 blocks
    trace["requests"].append(request([50, 51, 52], think=0.0, out=5))  # compacted
    trace["requests"].append(request([1, 2, 60], think=0.0, out=5))  # first blocks kept
    write_trace(tmp_path / "a.json", trace)
    sessions = load_traces(tmp_path).sessions
    mapper = TokenMapper(vocab_size=5000)
    mapper.use_warm_prefix(warm_prefix_trace_tokens(sessions, 0.5))
    assert mapper.warm_prefix_tokens == 128
    (session,) = sessions
    prompts = [mapper.prompt(session, i) for i in range(5)]
    assert [mapper.keeps_warm_prefix(session, i) for i in range(5)] == [
        True, True, True, False, True
    ]  # fmt: skip
    assert prompts[3][:128] != prompts[0][:128]
    assert prompts[4][:128] == prompts[0][:128]
    # Without the prefix the same request is the plain block mapping.
    plain = TokenMapper(vocab_size=5000)
    assert prompts[3] == plain.prompt(session, 3)
    assert prompts[4][128:] == plain.prompt(session, 4)[128:]


def test_bad_warm_prefix_share_is_refused(three_traces: Path) -> None:
    with pytest.raises(ReplayInputError, match="warm prefix share"):
        warm_prefix_trace_tokens(load_traces(three_traces).sessions, 1.5)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([str(three_traces), "--warm-prefix-pct", "-0.1", "--quiet"])
    assert cli.run(args) == cli.EXIT_BAD_INPUT


def _growing(out: int) -> dict[str, Any]:
    # Inputs 138, 266, 394, 522 tokens.
    return {"id": "g", "requests": [request(list(range(1, 2 * n + 1)), think=0.0, out=out)
                                    for n in range(1, 5)]}  # fmt: skip


def test_a_session_ends_before_the_first_input_longer_than_max_context(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    write_trace(folder / "g.json", _growing(out=100))
    with StandInReplica(max_model_len=4096) as server:
        summary = _replay(folder, tmp_path / "out", server, "--max-context", "300")
    # 266 + 100 output > 300 is still sent (kv-cache-tester counts the input only); the
    # 394-token request is not, and it is not cut to fit either.
    assert [len(p) for p in server.prompts] == [138, 266]
    assert summary["sessions_truncated"] == 1
    assert summary["sessions_finished"] == 0
    assert summary["requests_failed"] == 0


def test_output_is_shortened_to_fit_the_servers_length(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    write_trace(folder / "g.json", _growing(out=100))
    with StandInReplica(max_model_len=300) as server:
        summary = _replay(folder, tmp_path / "out", server)
    # Default max context = the server's 300: 138 + 100 fits; 266 gets 34 output tokens
    # (the server would refuse 100); 394 ends the session.
    assert [len(p) for p in server.prompts] == [138, 266]
    assert [b["max_tokens"] for b in server.bodies] == [100, 34]
    assert summary["requests_failed"] == 0
    assert summary["sessions_truncated"] == 1


def test_each_request_asks_for_its_recorded_output(tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    trace = {"id": "o", "requests": [request([1], out=7), request([1, 2], think=0.0, out=300),
                                     request([1, 2, 3], think=0.0, out=40)]}  # fmt: skip
    write_trace(folder / "o.json", trace)
    with StandInReplica() as server:
        _replay(folder, tmp_path / "out", server, "--max-output-tokens", "64")
    assert [b["max_tokens"] for b in server.bodies] == [7, 64, 40]
    assert all(b["ignore_eos"] is True and b["stream"] is True for b in server.bodies)
