"""The shared tier's circuit breaker, on a controlled clock."""

from __future__ import annotations

import logging

import pytest

from atom_tier.tiers.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_backs_off_doubles_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    breaker = CircuitBreaker("tier X", base_s=1.0, max_s=3.0, clock=clock)
    assert breaker.allow() and breaker.state is BreakerState.CLOSED
    with caplog.at_level(logging.DEBUG, logger="vllm.atom_tier"):
        breaker.failure(ConnectionError("refused"))
        assert breaker.state is BreakerState.OPEN and not breaker.allow()
        clock.now += 1.0
        assert breaker.state is BreakerState.HALF_OPEN
        assert breaker.allow() and not breaker.allow()  # exactly one trial
        breaker.failure(ConnectionError("refused"))  # trial failed: wait doubles to 2 s
        clock.now += 1.5
        assert not breaker.allow()
        clock.now += 0.5
        assert breaker.allow()
        breaker.failure(ConnectionError("refused"))  # 4 s, capped at 3 s
        clock.now += 3.0
        assert breaker.allow()
        breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.opened == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "again" in r.message]
    assert len(warnings) == 1 and "refused" in warnings[0].message and len(infos) == 1
