"""Closed-loop rules: percentiles, think-time scaling, seeded trace order, the user ramp."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from atom_tier.replay.scheduler import (
    RampController,
    SessionQueue,
    percentile,
    scaled_think,
    ttft_statistic,
)
from atom_tier.replay.traces import ReplayInputError, load_traces


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert math.isnan(percentile([], 50))


def test_ttft_statistics() -> None:
    values = [0.1, 0.2, 0.6]
    assert ttft_statistic(values, "avg") == pytest.approx(0.3)
    assert ttft_statistic(values, "p50") == 0.2
    assert ttft_statistic(values, "max") == 0.6
    with pytest.raises(ReplayInputError, match="TTFT metric"):
        ttft_statistic(values, "p99")


def test_think_time_is_scaled_then_capped() -> None:
    assert scaled_think(10.0, 0.1, 60.0) == pytest.approx(1.0)
    assert scaled_think(1000.0, 0.1, 60.0) == 60.0
    assert scaled_think(1000.0, 1.0, None) == 1000.0
    assert scaled_think(-3.0, 1.0, None) == 0.0


def test_session_order_depends_on_seed_only(synth_dir: Path) -> None:
    sessions = list(load_traces(synth_dir).sessions)
    first = SessionQueue(sessions, seed=1, recycle=False)
    reordered = SessionQueue(list(reversed(sessions)), seed=1, recycle=False)
    assert [s.session_id for s in first.order] == [s.session_id for s in reordered.order]
    other = SessionQueue(sessions, seed=2, recycle=False)
    assert [s.session_id for s in first.order] != [s.session_id for s in other.order]


def test_without_recycling_each_session_is_handed_out_once(synth_dir: Path) -> None:
    sessions = list(load_traces(synth_dir).sessions)
    queue = SessionQueue(sessions, seed=0, recycle=False)
    taken = []
    while (item := queue.take()) is not None:
        taken.append(item)
    assert sorted(s.session_id for s, _ in taken) == sorted(s.session_id for s in sessions)
    assert {cycle for _, cycle in taken} == {0}
    assert queue.exhausted


def test_recycling_starts_over_as_a_new_cycle(synth_dir: Path) -> None:
    sessions = list(load_traces(synth_dir).sessions)
    queue = SessionQueue(sessions, seed=0, recycle=True)
    taken = [queue.take() for _ in range(2 * len(sessions) + 1)]
    assert all(item is not None for item in taken)
    cycles = [item[1] for item in taken if item is not None]
    assert cycles == [0] * len(sessions) + [1] * len(sessions) + [2]
    ids = [item[0].session_id for item in taken if item is not None]
    assert ids[: len(sessions)] == ids[len(sessions) : 2 * len(sessions)]
    assert not queue.exhausted


def test_empty_session_list_is_refused() -> None:
    with pytest.raises(ReplayInputError, match="no session"):
        SessionQueue([], seed=0, recycle=False)


def test_ramp_without_target_grows_every_period_up_to_max() -> None:
    ramp = RampController(start_users=2, max_users=5, step=2)
    assert ramp.users == 2
    assert [ramp.decide([]) for _ in range(3)] == [4, 5, 5]


def test_ramp_with_target_grows_only_under_it() -> None:
    ramp = RampController(start_users=1, max_users=4, ttft_target=0.5, metric="p95")
    assert ramp.decide([0.1, 0.2]) == 2  # under the target: one more user
    assert ramp.decide([0.1, 0.9]) == 2  # p95 over the target: hold
    assert ramp.decide([]) == 2  # nothing completed: no evidence of room, hold
    assert ramp.decide([0.4]) == 3
    assert ramp.decide([0.4]) == 4
    assert ramp.decide([0.01]) == 4  # never past the maximum


def test_ramp_metric_choice_matters() -> None:
    values = [0.1] * 9 + [2.0]
    assert RampController(1, 3, ttft_target=0.5, metric="p50").decide(values) == 2
    assert RampController(1, 3, ttft_target=0.5, metric="max").decide(values) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 3), "start users"),
        ((4, 3), "max users"),
        ((1, 3, 0.0), "TTFT target"),
        ((1, 3, None, "p77"), "TTFT metric"),
        ((1, 3, None, "p95", 0), "ramp step"),
    ],
)
def test_bad_ramp_options_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ReplayInputError, match=message):
        RampController(*args)
