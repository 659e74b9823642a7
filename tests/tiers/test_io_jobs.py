"""io_jobs: a job's groups run on a real thread pool; outcomes come back in item order."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from atom_tier.tiers import io_jobs


def test_groups_cover_items_in_order_and_hold_at_least_group_bytes() -> None:
    sizes = [300_000, 300_000, 600_000, 2_000_000, 10, 10]
    groups = io_jobs.group_items(sizes, lambda n: n)
    assert [n for group in groups for n in group] == sizes
    assert all(sum(group) >= io_jobs.GROUP_BYTES for group in groups[:-1])
    assert groups == [[300_000, 300_000, 600_000], [2_000_000], [10, 10]]


def test_outcomes_are_in_item_order_whatever_order_groups_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(io_jobs, "GROUP_BYTES", 2)  # groups of two items
    finished_on: list[str] = []

    def run_group(items: list[int]) -> list[int]:
        time.sleep(0.01 * (10 - items[0]))  # later groups finish first
        return [i * 10 for i in items]

    def finish(outcomes: list[int]) -> list[int]:
        finished_on.append(threading.current_thread().name)
        return outcomes

    with ThreadPoolExecutor(4, thread_name_prefix="io") as pool:
        future = io_jobs.submit_job(pool, list(range(8)), lambda _: 1, run_group, finish)
        assert future.result(10) == [i * 10 for i in range(8)]
    assert len(finished_on) == 1 and finished_on[0].startswith("io")


def test_an_empty_job_is_done_at_once_and_a_raising_group_fails_the_job() -> None:
    with ThreadPoolExecutor(2) as pool:
        empty = io_jobs.submit_job(pool, [], lambda _: 1, lambda g: g, lambda o: len(o))
        assert empty.done() and empty.result() == 0

        def broken(items: list[int]) -> list[int]:
            raise RuntimeError("group failed")

        failed = io_jobs.submit_job(pool, [1, 2], lambda _: 1, broken, lambda o: o)
        with pytest.raises(RuntimeError, match="group failed"):
            failed.result(10)


def test_a_failed_group_completes_the_job_only_after_every_other_group_ended() -> None:
    """Other groups may still be filling the caller's buffers: the job must not end before."""
    release = threading.Event()

    def run_group(items: list[int]) -> list[int]:
        if items[0] == 0:
            raise OSError("first group failed")
        assert release.wait(10)
        if items[0] == 2:
            raise OSError("second failure")
        return items

    with ThreadPoolExecutor(4) as pool:
        future = io_jobs.submit_job(
            pool, [0, 1, 2, 3], lambda _: io_jobs.GROUP_BYTES, run_group, lambda o: o
        )
        time.sleep(0.2)
        assert not future.done()
        release.set()
        with pytest.raises(OSError, match="first group failed"):
            future.result(10)


def test_a_job_submitted_to_a_closed_pool_fails_instead_of_hanging() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    future = io_jobs.submit_job(pool, [1, 2], lambda _: 1, lambda g: g, lambda o: o)
    with pytest.raises(RuntimeError):
        future.result(1)
