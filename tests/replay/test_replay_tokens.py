"""Block id → token mapping: deterministic, prefix reuse reproduced exactly, scaled lengths."""

from __future__ import annotations

from pathlib import Path

import pytest
from replay_helpers import request, write_trace

from atom_tier.replay.tokens import TokenMapper
from atom_tier.replay.traces import ReplayInputError, Session, load_traces


def _sessions(tmp_path: Path, scope: str = "local") -> list[Session]:
    write_trace(tmp_path / "a.json", {"id": "a", "hash_id_scope": scope, "requests": [
        request([1, 2, 3], extra_tokens=40, out=300),
        request([1, 2, 3, 4, 5], extra_tokens=0, out=10),
        request([1, 2, 9], extra_tokens=63, out=1),      # diverges after block 2
    ]})  # fmt: skip
    write_trace(tmp_path / "b.json", {"id": "b", "hash_id_scope": scope, "requests": [
        request([1, 2, 3], extra_tokens=40),
    ]})  # fmt: skip
    return list(load_traces(tmp_path).sessions)


def _common_prefix(x: list[int], y: list[int]) -> int:
    n = 0
    while n < min(len(x), len(y)) and x[n] == y[n]:
        n += 1
    return n


def test_same_trace_and_id_give_the_same_tokens(tmp_path: Path) -> None:
    a, _ = _sessions(tmp_path)
    first = TokenMapper(vocab_size=508, token_scale=1 / 16, seed=5)
    second = TokenMapper(vocab_size=508, token_scale=1 / 16, seed=5)
    assert first.prompt(a, 1) == second.prompt(a, 1)
    assert first.prompt(a, 0) != TokenMapper(vocab_size=508, token_scale=1 / 16, seed=6).prompt(
        a, 0
    )


@pytest.mark.parametrize("scale", [1.0, 1 / 4, 1 / 16, 1 / 64])
def test_prefix_reuse_is_reproduced_exactly(tmp_path: Path, scale: float) -> None:
    a, _ = _sessions(tmp_path)
    mapper = TokenMapper(vocab_size=151_936, token_scale=scale)
    block = mapper.block_tokens(64)
    p0, p1, p2 = (mapper.prompt(a, i) for i in range(3))
    # Request 1 extends request 0's three blocks: exactly those 3 blocks are shared (the
    # tail of request 0 is a partial block the trace gives no id, so it is not).
    assert p1[: 3 * block] == p0[: 3 * block]
    assert _common_prefix(p0, p1) < 3 * block + max(1, block)  # no accidental longer match
    # Request 2 shares blocks 1 and 2 with both, then diverges.
    assert p2[: 2 * block] == p0[: 2 * block]
    assert p2[2 * block : 3 * block] != p0[2 * block : 3 * block]


def test_ids_in_different_local_traces_are_different_content(tmp_path: Path) -> None:
    a, b = _sessions(tmp_path)
    mapper = TokenMapper(vocab_size=508, token_scale=1 / 8)
    block = mapper.block_tokens(64)
    assert mapper.prompt(a, 0)[:block] != mapper.prompt(b, 0)[:block]


def test_ids_in_global_scope_are_shared_across_traces(tmp_path: Path) -> None:
    a, b = _sessions(tmp_path, scope="global")
    mapper = TokenMapper(vocab_size=508, token_scale=1 / 8)
    block = mapper.block_tokens(64)
    assert mapper.prompt(a, 0)[: 3 * block] == mapper.prompt(b, 0)[: 3 * block]


def test_a_recycled_session_is_new_content(tmp_path: Path) -> None:
    a, _ = _sessions(tmp_path)
    mapper = TokenMapper(vocab_size=508, token_scale=1 / 8)
    assert mapper.prompt(a, 0, cycle=0) != mapper.prompt(a, 0, cycle=1)
    assert mapper.prompt(a, 1, cycle=1)[:24] == mapper.prompt(a, 0, cycle=1)[:24]


def test_token_scale_shrinks_blocks_tails_and_outputs(tmp_path: Path) -> None:
    a, _ = _sessions(tmp_path)
    full = TokenMapper(vocab_size=508)
    assert len(full.prompt(a, 0)) == 3 * 64 + 40 == a.requests[0].input_tokens
    quarter = TokenMapper(vocab_size=508, token_scale=0.25)
    shape = quarter.shape(a, 0)
    assert (shape.block_tokens, shape.tail_tokens, shape.output_tokens) == (16, 10, 75)
    assert len(quarter.prompt(a, 0)) == shape.input_tokens == 3 * 16 + 10
    tiny = TokenMapper(vocab_size=508, token_scale=1 / 1000)
    assert tiny.block_tokens(64) == 1  # never below one token per block
    assert tiny.shape(a, 2).output_tokens == 1


def test_output_cap_applies_after_scaling(tmp_path: Path) -> None:
    a, _ = _sessions(tmp_path)
    assert TokenMapper(vocab_size=508, max_output_tokens=32).shape(a, 0).output_tokens == 32
    assert TokenMapper(vocab_size=508, max_output_tokens=32).shape(a, 1).output_tokens == 10


def test_token_ids_stay_inside_the_vocabulary(tmp_path: Path) -> None:
    a, _ = _sessions(tmp_path)
    mapper = TokenMapper(vocab_size=508)
    ids = [t for i in range(3) for t in mapper.prompt(a, i)]
    assert min(ids) >= mapper.low_id > 0  # lowest ids (special tokens) left alone
    assert max(ids) < 508
    assert len(set(ids)) > 200, "blocks use the whole range, not a few ids"


def test_a_request_shorter_than_a_block_still_sends_a_token(tmp_path: Path) -> None:
    write_trace(tmp_path / "s.json", {"id": "s", "requests": [request([], extra_tokens=3)]})
    (session,) = load_traces(tmp_path).sessions
    assert len(TokenMapper(vocab_size=100, token_scale=1 / 64).prompt(session, 0)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 1}, "vocabulary size"),
        ({"vocab_size": 100, "token_scale": 0.0}, "token scale"),
        ({"vocab_size": 100, "token_scale": 2.0}, "token scale"),
        ({"vocab_size": 100, "max_output_tokens": 0}, "max output tokens"),
    ],
)
def test_bad_mapper_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ReplayInputError, match=message):
        TokenMapper(**kwargs)
