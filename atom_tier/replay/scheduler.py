"""Closed-loop user logic with no I/O: trace assignment, think times, the user ramp.

Kept apart from the asyncio runner so that each rule is tested on its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from atom_tier.replay.traces import ReplayInputError, Session

TTFT_METRICS = ("avg", "p50", "p95", "max")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(100.0, max(0.0, q)) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ttft_statistic(values: Sequence[float], metric: str) -> float:
    """One TTFT figure of a set of requests: ``avg``, ``p50``, ``p95`` or ``max``."""
    if metric not in TTFT_METRICS:
        raise ReplayInputError(f"TTFT metric must be one of {', '.join(TTFT_METRICS)}")
    if not values:
        return math.nan
    if metric == "avg":
        return sum(values) / len(values)
    if metric == "max":
        return max(values)
    return percentile(values, 50.0 if metric == "p50" else 95.0)


def scaled_think(recorded: float, scale: float, cap: float | None) -> float:
    """The delay a user waits before its next request: recorded think time × scale, capped.

    Real think times are long-tailed (median 10 s, p90 ~160 s, some hours): the cap keeps a
    bounded run from idling on one user's lunch break.
    """
    delay = max(0.0, recorded) * scale
    return delay if cap is None else min(delay, cap)


class SessionQueue:
    """Hands out sessions in one fixed order drawn from ``seed``, so arms are comparable.

    The order depends only on the session ids and the seed, never on timing: whichever user
    asks next gets the next session. With ``recycle`` the order starts over when it runs out,
    and each pass is a new ``cycle`` (a fresh conversation of the same shape).
    """

    def __init__(self, sessions: Sequence[Session], *, seed: int, recycle: bool) -> None:
        if not sessions:
            raise ReplayInputError("no session to replay (all filtered out?)")
        self.order = sorted(sessions, key=lambda s: s.session_id)
        random.Random(seed).shuffle(self.order)
        self.recycle = recycle
        self.cycle = 0
        self._next = 0
        self.handed_out = 0

    @property
    def exhausted(self) -> bool:
        return not self.recycle and self._next >= len(self.order)

    def take(self) -> tuple[Session, int] | None:
        """The next (session, cycle), or None when every session was handed out."""
        if self._next >= len(self.order):
            if not self.recycle:
                return None
            self.cycle += 1
            self._next = 0
        session = self.order[self._next]
        self._next += 1
        self.handed_out += 1
        return session, self.cycle


@dataclass
class RampController:
    """How many users should be active: start, then grow each period up to the maximum.

    Without a TTFT target the ramp grows by ``step`` every period (a linear ramp; set start =
    max for a fixed load). With a target it grows only after a period whose TTFT ``metric``
    stayed at or under the target, and holds otherwise (a period with no completed request
    also holds: no evidence the server has room).
    """

    start_users: int
    max_users: int
    ttft_target: float | None = None
    metric: str = "p95"
    step: int = 1
    users: int = field(init=False)

    def __post_init__(self) -> None:
        if self.start_users < 1:
            raise ReplayInputError(f"start users must be at least 1, got {self.start_users}")
        if self.max_users < self.start_users:
            raise ReplayInputError(
                f"max users ({self.max_users}) must be at least start users ({self.start_users})"
            )
        if self.step < 1:
            raise ReplayInputError(f"ramp step must be at least 1, got {self.step}")
        if self.ttft_target is not None and self.ttft_target <= 0:
            raise ReplayInputError(f"TTFT target must be positive, got {self.ttft_target}")
        ttft_statistic([], self.metric)  # validates the metric name
        self.users = self.start_users

    def decide(self, period_ttfts: Sequence[float]) -> int:
        """The target number of users after a period with these TTFTs (seconds)."""
        if self.users >= self.max_users:
            return self.users
        if self.ttft_target is None:
            grow = True
        else:
            grow = bool(period_ttfts) and (
                ttft_statistic(period_ttfts, self.metric) <= self.ttft_target
            )
        if grow:
            self.users = min(self.max_users, self.users + self.step)
        return self.users


def spread(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(avg, p50, p95, max) of ``values``; NaNs when empty."""
    if not values:
        nan = float("nan")
        return nan, nan, nan, nan
    return (
        sum(values) / len(values),
        percentile(values, 50),
        percentile(values, 95),
        max(values),
    )
