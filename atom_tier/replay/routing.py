"""Which endpoint serves a request when a replay drives several servers (replicas).

``round-robin`` takes the endpoints in turn, request by request, as a load balancer with no
session affinity does. ``sticky`` sends every request of a conversation, its sub-agents
included, to one endpoint chosen by a stable hash of the conversation (its trace id and replay
cycle): a router with session affinity. ``random`` draws an endpoint per request from the
replay's seed. Hashes use SHA-256, not Python's ``hash`` (salted per process), so the same
conversation lands on the same endpoint in every run.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from atom_tier.replay.traces import ReplayInputError, Session

ROUTING_MODES = ("round-robin", "sticky", "random")


def sticky_index(trace_id: str, cycle: int, endpoints: int) -> int:
    """The endpoint of conversation ``trace_id`` in replay ``cycle`` (sticky routing).

    A recycled conversation (cycle > 0) is a new conversation with new tokens, so it is hashed
    as one: with few traces, recycling still spreads conversations over the endpoints.
    """
    digest = hashlib.sha256(f"{trace_id}\x00{cycle}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % endpoints


class Router:
    """Picks the endpoint index (0-based) of each request, in the order requests are sent."""

    def __init__(self, mode: str, endpoints: Sequence[str], *, seed: int) -> None:
        if mode not in ROUTING_MODES:
            raise ReplayInputError(
                f"routing must be one of {', '.join(ROUTING_MODES)}, got {mode!r}"
            )
        if not endpoints:
            raise ReplayInputError("no endpoint to replay against")
        if len(set(endpoints)) != len(endpoints):
            raise ReplayInputError(f"an endpoint is given twice: {', '.join(endpoints)}")
        self.mode = mode
        self.endpoints = tuple(endpoints)
        self._turn = 0
        self._random = random.Random(seed)

    def pick(self, session: Session, cycle: int) -> int:
        """The endpoint of the next request of ``session`` (replay ``cycle``)."""
        count = len(self.endpoints)
        if count == 1:
            return 0
        if self.mode == "sticky":
            # A sub-agent's session has its own id but its parent's trace id.
            return sticky_index(session.trace_id, cycle, count)
        if self.mode == "random":
            return self._random.randrange(count)
        index = self._turn % count
        self._turn += 1
        return index
