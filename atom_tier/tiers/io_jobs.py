"""Jobs of the NVMe tier on its I/O threads: a job's items run in groups, one task each.

Each group runs on one thread from start to end (deletions, claims, I/O, checks, index
updates); the thread that finishes a job's last group builds the job's result and completes
its future. No event loop sits between the caller and the I/O: on 2 vCPUs, hopping
caller -> loop -> thread -> loop per job cost a quarter of small-chunk read throughput
(docs/benchmarks.md, "NVMe tier").
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from typing import Generic, TypeVar

_I = TypeVar("_I")
_O = TypeVar("_O")
_R = TypeVar("_R")
# A task per 128 KiB chunk cost ~2x throughput; groups of ~1 MiB keep several threads busy
# per job for small chunks and one chunk per task for large ones.
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
    """Collects the outcomes of a job's groups; the last group to finish completes it."""

    def __init__(self, groups: int, finish: Callable[[list[_O]], _R], future: Future[_R]) -> None:
        self._lock = threading.Lock()
        self._left = groups
        self._parts: list[list[_O]] = [[] for _ in range(groups)]
        self._finish = finish
        self._future = future

    def group_done(self, index: int, task: Future[list[_O]]) -> None:
        error = task.exception()
        with self._lock:
            if error is None:
                self._parts[index] = task.result()
            self._left -= 1
            last = self._left == 0
        if error is not None:  # never expected: groups report I/O errors, not raise them
            if not self._future.done():
                self._future.set_exception(error)
            return
        if last and not self._future.done():
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
    outcomes, in item order (at once when there are no items)."""
    future: Future[_R] = Future()
    groups = group_items(items, nbytes)
    if not groups:
        future.set_result(finish([]))
        return future
    job = _Job(len(groups), finish, future)
    for index, group in enumerate(groups):
        executor.submit(run_group, group).add_done_callback(
            functools.partial(job.group_done, index)
        )
    return future
