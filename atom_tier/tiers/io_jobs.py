"""Jobs of the NVMe tier on its I/O threads: a job's items run in groups, one task each.

Each group runs on one thread from start to end (deletions, claims, I/O, checks, index
updates); the thread that finishes a job's last group builds the job's result and completes
its future. No event loop sits between the caller and the I/O: on 2 vCPUs, hopping
caller -> loop -> thread -> loop per job cost a quarter of small-chunk read throughput
(docs/benchmarks.md, "NVMe tier").
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Generic, TypeVar

_I = TypeVar("_I")
_O = TypeVar("_O")
_R = TypeVar("_R")
# Measured with 128 KiB chunks (docs/benchmarks.md, "NVMe tier"): 128-256 KiB groups read
# no faster than 1 MiB groups and wrote 19-24% slower. Large chunks get one task each.
GROUP_BYTES = 1 << 20


def group_items(items: Sequence[_I], nbytes: Callable[[_I], int]) -> list[list[_I]]:
    """Consecutive items in groups of at least GROUP_BYTES (one I/O-thread task each)."""
    groups: list[list[_I]] = []
    size = GROUP_BYTES
    for item in items:
        if size >= GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += nbytes(item)
    return groups


class _Job(Generic[_O, _R]):
    """Collects the outcomes of a job's groups; the last group to finish completes it.

    Never earlier, even when a group failed: until every group is done, other groups may
    still be reading into or writing from the caller's buffers, which the caller frees
    (hands to other requests) as soon as the job completes.
    """

    def __init__(self, groups: int, finish: Callable[[list[_O]], _R], future: Future[_R]) -> None:
        self._lock = threading.Lock()
        self._left = groups
        self._parts: list[list[_O]] = [[] for _ in range(groups)]
        self._error: BaseException | None = None
        self._finish = finish
        self._future = future

    def group_done(self, index: int, task: Future[list[_O]]) -> None:
        error = task.exception()
        self._settle(index, None if error is not None else task.result(), error)

    def group_not_run(self, error: BaseException) -> None:
        self._settle(-1, None, error)

    def _settle(self, index: int, outcomes: list[_O] | None, error: BaseException | None) -> None:
        with self._lock:
            if outcomes is not None:
                self._parts[index] = outcomes
            if error is not None and self._error is None:
                self._error = error  # never expected: groups report I/O errors as outcomes
            self._left -= 1
            if self._left:
                return
        if self._error is not None:
            self._future.set_exception(self._error)
            return
        try:
            result = self._finish([o for part in self._parts for o in part])
        except Exception as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(result)


def submit_job(
    executor: Executor,
    items: list[_I],
    nbytes: Callable[[_I], int],
    run_group: Callable[[list[_I]], list[_O]],
    finish: Callable[[list[_O]], _R],
) -> Future[_R]:
    """Run ``run_group`` on each group of ``items``; the future gets ``finish`` of all their
    outcomes, in item order (at once when there are no items), or the first exception a
    group raised, once every group has ended."""
    future: Future[_R] = Future()
    groups = group_items(items, nbytes)
    if not groups:
        future.set_result(finish([]))
        return future
    job = _Job(len(groups), finish, future)
    for index, group in enumerate(groups):
        try:
            task = executor.submit(run_group, group)
        except RuntimeError as exc:  # the executor shut down: the rest never runs
            for _ in range(len(groups) - index):
                job.group_not_run(exc)
            break
        task.add_done_callback(functools.partial(job.group_done, index))
    return future


class JobsInFlight:
    """The futures of submitted jobs not completed yet; ``drain`` waits for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[Future[Any]] = set()

    def track(self, future: Future[_R]) -> Future[_R]:
        """Count a job as in flight until it completes."""
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._untrack)  # at once when already done
        return future

    def _untrack(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def drain(self) -> None:
        """Wait for every tracked job, including those submitted meanwhile."""
        while True:
            with self._lock:
                pending = list(self._futures)
            if not pending:
                return
            for future in pending:
                with contextlib.suppress(Exception):
                    future.result()
