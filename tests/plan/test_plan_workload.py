"""The planner's request stream against the replay's rules, on hand-built sessions.

Trace blocks are 64 tokens, chunks 256 tokens and KV blocks 64 tokens; every expected count is
worked out by hand in the test.
"""

from __future__ import annotations

import dataclasses

import pytest
from plan_helpers import session

from atom_tier.plan.simulator import device_hits
from atom_tier.plan.workload import Workload, WorkloadOptions, build_workload
from atom_tier.replay.traces import ReplayInputError, Session


def with_prefix(owner: Session, prefix_tokens: int) -> Session:
    return dataclasses.replace(owner, prefix_tokens=prefix_tokens)


def build(sessions: list[Session], **options: object) -> Workload:
    return build_workload(
        sessions, WorkloadOptions(users=1, **options), chunk_tokens=256, block_tokens=64
    )


# Two conversations with nothing in common but the warm prefix. The largest tool + system
# prefix is 1,100 tokens, so the default share 0.5 gives a 550-token canonical prefix: chunks 0
# and 1 (tokens 0-511) are wholly inside it, chunk 2 (512-767) only partly.
FIRST = with_prefix(session("first", [(list(range(1, 13)), 10)]), 1_100)
SECOND = with_prefix(session("second", [(list(range(101, 113)), 10)]), 400)


def test_the_warm_prefix_gives_every_conversation_the_same_first_chunks() -> None:
    workload = build([FIRST, SECOND])
    one, two = workload.requests
    assert one.chain[:2] == two.chain[:2]
    assert one.chain[2] != two.chain[2]  # canonical tokens, then each session's own
    # The second conversation finds the two canonical chunks in the device cache: 512 tokens.
    assert device_hits(workload, None) == [0, 512]


def test_the_warm_prefix_blocks_past_its_whole_chunks_hit_in_every_conversation() -> None:
    # A largest prefix of 1,300 tokens: a 650-token canonical prefix, chunks 0-1 and the
    # first 2 blocks (128 tokens) of chunk 2. vLLM matches blocks: the second conversation
    # hits those blocks too (512 + 128), though its chunk 2 is its own.
    first = with_prefix(FIRST, 1_300)
    workload = build([first, SECOND])
    assert device_hits(workload, None) == [0, 640]
    # The first conversation fills 12 blocks: 4 + 4 + 2 of the warm prefix and the 2 own
    # blocks of its chunk 2. A device of 3 chunks (11 blocks past the null block) gives up
    # the blocks freed first, vLLM frees tail first: chunk 2's own ones. The warm prefix's
    # 2 blocks in chunk 2 stay, and the second conversation still hits 640.
    assert device_hits(workload, 3) == [0, 640]


def test_without_the_warm_prefix_conversations_share_nothing() -> None:
    workload = build([FIRST, SECOND], warm_prefix_pct=0.0)
    one, two = workload.requests
    assert not set(one.chain) & set(two.chain)
    assert device_hits(workload, None) == [0, 0]


def test_a_request_that_changed_its_first_blocks_loses_the_warm_prefix() -> None:
    # Request 1 no longer starts with request 0's first blocks (the replay's
    # keeps_warm_prefix): its prompt, and so its chunks, are its own again.
    changed = with_prefix(
        session("changed", [(list(range(1, 13)), 10), (list(range(201, 213)), 10)]), 1_100
    )
    first, second = build([changed]).requests
    assert second.chain[0] != first.chain[0]


def test_max_context_counts_the_input_only() -> None:
    # Inputs of 500 and 900 tokens, 10 output tokens each (kv-cache-tester's rule: the session
    # ends before its first input longer than the max context; the output does not count).
    two_turns = session("turns", [(list(range(1, 8)), 52), (list(range(1, 14)), 68)])
    assert [r.input_tokens for r in build([two_turns], max_context=900).requests] == [500, 900]
    cut = build([two_turns], max_context=899)
    assert [r.input_tokens for r in cut.requests] == [500]
    assert cut.sessions_truncated == 1


def test_a_warm_prefix_share_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ReplayInputError, match="warm prefix share must be in"):
        build([FIRST], warm_prefix_pct=1.5)
