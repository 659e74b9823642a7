"""Closed-loop users whose requests end when a time model says so, not when they are sent.

:func:`~atom_tier.plan.workload.build_workload` asks its ``respond`` for a request's end as soon
as the request is sent. A model that steps the server in time cannot answer then: a running
request's steps grow with the requests that arrive after it. :class:`ClosedLoop` keeps the
users' side in the open instead: :meth:`~ClosedLoop.sends` gives the requests sent up to a
time, :meth:`~ClosedLoop.ended` is told when each one ends.

The users follow the builder's (the replay's) rules: each takes the next session of the
seeded order, sends its requests one after another and waits the scaled, capped think time
before each, drops a session at its first request longer than the max context and takes the
next one at once, stops at ``options.duration``, and no request is sent past
``options.max_requests``. What a request holds (keys, lengths) depends only on its session,
cycle and index, never on timing, so requests come from the workload one user would send
(``build_workload`` with one user: every session in the queue's order, each up to its first
request that does not fit), renumbered and retimed as sent here.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence

from atom_tier.plan.workload import PlannedRequest, WorkloadOptions, build_workload
from atom_tier.replay.scheduler import scaled_think
from atom_tier.replay.traces import Session

SessionKey = tuple[str, int]  # session id, cycle


class ClosedLoop:
    """``options.users`` users in virtual time; requests in the order sent."""

    def __init__(
        self,
        sessions: Sequence[Session],
        options: WorkloadOptions,
        *,
        chunk_tokens: int,
        block_tokens: int,
    ) -> None:
        options.validate()
        self.sessions = {s.session_id: s for s in sessions}
        self.options = options
        self._shape = (sessions, chunk_tokens, block_tokens)
        self.starts: list[SessionKey] = []  # sessions in the order users take them
        self.pool: dict[SessionKey, list[PlannedRequest]] = {}
        self._complete = False  # the pool holds every session the queue hands out
        self._grow(max(256, 2 * (options.max_requests or 0)))
        self.ready: list[tuple[float, int]] = [(0.0, user) for user in range(options.users)]
        self.state: dict[int, tuple[SessionKey, int]] = {}  # user -> session, next index
        self.taken = 0  # sessions handed out
        self.sent: list[PlannedRequest] = []
        self._stopped = False

    def _grow(self, size: int) -> None:
        sessions, chunk, block = self._shape
        one = dataclasses.replace(
            self.options, users=1, duration=None, max_requests=size, request_s=0.0
        )
        workload = build_workload(sessions, one, chunk_tokens=chunk, block_tokens=block)
        self.starts, self.pool = [], {}
        for request in workload.requests:
            key = (request.session_id, request.cycle)
            if key not in self.pool:
                self.starts.append(key)
                self.pool[key] = []
            self.pool[key].append(request)
        self._complete = len(workload.requests) < size
        self._size = size

    def _take(self) -> SessionKey | None:
        # The pool's last session may be cut short by its size: never hand it out as it is.
        while not self._complete and self.taken >= len(self.starts) - 1:
            self._grow(2 * self._size)
        if self.taken >= len(self.starts):
            return None  # every session was handed out (no recycling)
        self.taken += 1
        return self.starts[self.taken - 1]

    def next_time(self) -> float | None:
        """When the next user may send (None: no user will)."""
        if self._stopped or not self.ready:
            return None
        return self.ready[0][0]

    def sends(self, until: float) -> list[PlannedRequest]:
        """The requests sent at ``until`` or before, in the order sent."""
        options, out = self.options, []
        while not self._stopped and self.ready and self.ready[0][0] <= until:
            now, user = heapq.heappop(self.ready)
            if options.duration is not None and now >= options.duration:
                continue  # the user stops
            if options.max_requests is not None and len(self.sent) >= options.max_requests:
                self._stopped = True
                break
            current = self.state.get(user)
            if current is None:
                key = self._take()
                if key is None:
                    continue
                current = (key, 0)
            key, index = current
            planned = self.pool[key]
            if index >= len(planned):  # too long for the max context: the next session
                self.state.pop(user, None)
                heapq.heappush(self.ready, (now, user))
                continue
            self.state[user] = current
            request = dataclasses.replace(
                planned[index], serial=len(self.sent), time=now, user=user
            )
            self.sent.append(request)
            out.append(request)
        return out

    def ended(self, request: PlannedRequest, time: float) -> None:
        """``request`` (one of :meth:`sends`) ended at ``time``: its user thinks, then sends
        the session's next request, or takes the next session at once after the last."""
        user = request.user
        session = self.sessions[request.session_id]
        nxt = request.index + 1
        if nxt < len(session.requests):
            self.state[user] = ((request.session_id, request.cycle), nxt)
            think = scaled_think(
                session.think_before(nxt), self.options.think_scale, self.options.max_think
            )
            heapq.heappush(self.ready, (time + think, user))
        else:
            self.state.pop(user, None)
            heapq.heappush(self.ready, (time, user))
