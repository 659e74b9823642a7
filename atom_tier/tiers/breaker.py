"""A circuit breaker for a remote tier: one failure costs one timeout, then the tier stops
trying until a back-off has passed.

States: ``closed`` (calls go through), ``open`` (calls are refused at once, as misses), and
``half_open`` (the back-off has passed: exactly one caller is let through as a trial; its
success closes the breaker, its failure opens it again for twice as long, up to ``max_s``).
Only the first failure of a streak is logged at WARNING and the recovery at INFO, so a dead
server writes two log lines, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from atom_tier.log import get_logger

logger = get_logger(__name__)


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Thread-safe; ``where`` names the tier in log lines (no credentials)."""

    def __init__(
        self,
        where: str,
        base_s: float = 1.0,
        max_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._where = where
        self._base_s = base_s
        self._max_s = max(base_s, max_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._wait_s = base_s
        self._retry_at = 0.0
        self._trial_taken = False
        self.opened = 0  # times the breaker opened (a metric)
        self.last_error = ""

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if self._state is BreakerState.OPEN and self._clock() >= self._retry_at:
                return BreakerState.HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a call may go to the server now (in half-open state: once)."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._clock() < self._retry_at or self._trial_taken:
                return False
            self._trial_taken = True
            return True

    def success(self) -> None:
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return
            self._state = BreakerState.CLOSED
            self._wait_s = self._base_s
            self._trial_taken = False
        logger.info("%s: the server answers again; the tier is back in use", self._where)

    def failure(self, error: BaseException) -> None:
        with self._lock:
            first = self._state is BreakerState.CLOSED
            if not first:
                self._wait_s = min(self._wait_s * 2, self._max_s)
            self._state = BreakerState.OPEN
            self._retry_at = self._clock() + self._wait_s
            self._trial_taken = False
            self.last_error = f"{type(error).__name__}: {error}"
            if first:
                self.opened += 1
            wait = self._wait_s
        if first:
            logger.warning(
                "%s: %s. The tier is skipped (lookups miss, stores are dropped) and retried "
                "in %.0f s; the server keeps serving from its other tiers.",
                self._where,
                self.last_error,
                wait,
            )
        else:
            logger.debug("%s: still failing: %s", self._where, self.last_error)
