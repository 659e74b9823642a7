"""SharedChunkStore: chunks in a Valkey/Redis server (or cluster) that every replica reaches.

No vLLM here: keys are bytes, payloads are buffers. ``exists_prefix`` runs on the caller's
thread (the tier's lookup thread); stores and loads run on the store's I/O threads in groups
(``io_jobs``), one pipeline per group, and return concurrent futures.

Guarantees:
- a value is served only if its header, namespace, key, length, checksum and (with a secret)
  MAC verify (:mod:`shared_value`); anything else is a miss, deleted and counted;
- a store sends no payload for a key the server already holds (EXISTS first, then SET NX);
- a server that does not answer costs one timeout, then the circuit breaker skips the tier
  (lookups miss, stores are dropped, loads fail) until a trial call succeeds; a full server
  (OOM reply under ``noeviction``) rejects stores, counted, and nothing else changes;
- capacity and eviction are the server's (``maxmemory`` and its policy), checked at start.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from atom_tier.log import get_logger
from atom_tier.tiers.breaker import BreakerState, CircuitBreaker
from atom_tier.tiers.chunk_format import HEADER_BLOCK, ChunkFormatError, CorruptionKind
from atom_tier.tiers.io_jobs import JobsInFlight, submit_job
from atom_tier.tiers.shared_client import (
    ServerFacts,
    ServerFull,
    SharedClient,
    SharedUnavailable,
    server_warnings,
)
from atom_tier.tiers.shared_url import SharedTarget
from atom_tier.tiers.shared_value import (
    MAC_BYTES,
    Signer,
    UnsignedValueError,
    open_into,
    seal_parts,
    verify_parts,
)
from atom_tier.tiers.tier_stats import Counters, WriteReport

logger = get_logger(__name__)
_R = TypeVar("_R")

SHARED_COUNTER_NAMES = (
    "lookups",
    "hits",
    "misses",
    "lookup_batches",
    "lookup_seconds",
    "lookups_skipped",
    "probes",
    "probe_misses",
    "probe_seconds",
    "probes_unanswered",
    "reads",
    "read_bytes",
    "read_seconds",
    "read_failures",
    "vanished",
    "writes",
    "write_bytes",
    "write_seconds",
    "stores_present",
    "stores_skipped",
    "stores_rejected_full",
    "write_failures",
    "corrupt_dropped",
    *(f"corrupt_{kind.value}" for kind in CorruptionKind),
    "unsigned_dropped",
    "errors",
    "auth_errors",
    "breaker_opened",
)
SHARED_GAUGE_NAMES = ("ready", "breaker_open", "server_maxmemory_bytes")
# Keys checked per pipeline round trip while looking up one request's chain.
LOOKUP_WINDOW = 128
SETTING = "ATOM_TIER_SHARED_URL"


class BreakerOpen(Exception):
    """The breaker refused the call: the tier is being skipped."""


class SharedChunkStore:
    """See the module docstring. ``namespace`` is already specific to the model's identity,
    KV layout and the signing key; it is part of every key and of every header."""

    def __init__(
        self,
        target: SharedTarget,
        namespace: bytes,
        *,
        prefix: str = "atom-tier",
        signer: Signer | None = None,
        timeout_s: float = 1.0,
        io_threads: int = 4,
        client_factory: Callable[..., SharedClient] = SharedClient,
    ) -> None:
        self.target = target
        self.namespace = namespace
        self.signer = signer
        self._key_prefix = f"{prefix}:{namespace.decode()}:"
        self.counters = Counters(SHARED_COUNTER_NAMES)
        self.breaker = CircuitBreaker(f"Shared tier at {target.display}")
        self.facts: ServerFacts | None = None
        self._ready = threading.Event()
        self._start_lock = threading.Lock()
        self._starting = True
        self._inflight = JobsInFlight()
        self.client = client_factory(target, timeout_s, max_connections=io_threads + 2)
        self._client_factory = client_factory
        self._probe_client: SharedClient | None = None  # the scheduler thread's, made on use
        self._executor = ThreadPoolExecutor(io_threads, thread_name_prefix="atom_tier_shared")
        self._start = self._executor.submit(self._start_up)

    # -- start-up --------------------------------------------------------------------------
    def _start_up(self) -> None:
        try:
            facts = self.client.server_facts() if self.breaker.allow() else None
        except SharedUnavailable as error:
            facts = None
            self._failed(error)
        finally:
            with self._start_lock:
                self._starting = False
        if facts is None:
            return  # logged by the breaker (or as an authentication error)
        self.breaker.success()
        self.facts = facts
        self._ready.set()
        logger.info(
            "Shared tier at %s: %s %s, %d node(s), maxmemory %d bytes, policy %s%s",
            *(self.target.display, facts.product, facts.version, facts.nodes, facts.maxmemory),
            facts.policy,
            ", chunks signed" if self.signer else "",
        )
        for warning in server_warnings(facts):
            logger.warning("Shared tier at %s: %s", self.target.display, warning)

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._start.result(timeout)
        return self._ready.is_set()

    # -- calls through the breaker ---------------------------------------------------------
    def _call(self, function: Callable[..., _R], *args: object) -> _R:
        if not self.breaker.allow():
            raise BreakerOpen
        opened = self.breaker.state is not BreakerState.CLOSED
        try:
            result = function(*args)
        except SharedUnavailable as error:
            self._failed(error, logged=opened)
            raise
        self.breaker.success()
        if self.facts is None:
            self._restart_up()
        return result

    def _restart_up(self) -> None:
        """Read the server's facts once it answers (it was down when the tier started)."""
        with self._start_lock:
            if self._starting:
                return
            self._starting = True
        self._executor.submit(self._start_up)

    def _failed(self, error: SharedUnavailable, logged: bool = False) -> None:
        self.counters.add("errors")
        if error.auth:
            self.counters.add("auth_errors")
            if not logged:
                logger.error(
                    "Shared tier at %s refused the credentials in %s: %s; fix the user and "
                    "password in the URL (or the server's ACL)",
                    *(self.target.display, SETTING, error),
                )
        self.breaker.failure(error)

    def redis_key(self, key: bytes) -> str:
        return self._key_prefix + key.hex()

    # -- lookups (caller's thread) ---------------------------------------------------------
    def exists_prefix(self, keys: Sequence[bytes]) -> list[bool]:
        """Per key whether the server holds it, for one request's chain in order.

        Checked in windows of LOOKUP_WINDOW keys per round trip; after the first miss the rest
        are reported missing unchecked (a prefix cannot be used past its first hole). A tier
        being skipped answers all missing at once.
        """
        found = [False] * len(keys)
        start = time.monotonic()
        checked = 0
        try:
            for first in range(0, len(keys), LOOKUP_WINDOW):
                window = keys[first : first + LOOKUP_WINDOW]
                present = self._call(self.client.exists, [self.redis_key(k) for k in window])
                self.counters.add("lookup_batches")
                checked += len(window)
                found[first : first + len(window)] = present
                if not all(present):
                    hole = present.index(False)
                    found[first + hole :] = [False] * (len(keys) - first - hole)
                    break
        except (SharedUnavailable, BreakerOpen):
            self.counters.add("lookups_skipped", len(keys) - checked)
            found[checked:] = [False] * (len(keys) - checked)
        hits = sum(found)
        self.counters.add_many(
            {
                "lookups": len(keys),
                "hits": hits,
                "misses": len(keys) - hits,
                "lookup_seconds": time.monotonic() - start,
            }
        )
        return found

    def probe(self, key: bytes, timeout_s: float) -> bool | None:
        """Whether the server holds ``key``, asked on the caller's thread over a connection of
        its own that waits at most ``timeout_s``; None when it cannot say that fast. A slow
        probe is no failure of the tier: the breaker is left to the other calls."""
        if self.breaker.state is not BreakerState.CLOSED or not self._ready.is_set():
            return None
        start = time.monotonic()
        try:
            if self._probe_client is None:
                self._probe_client = self._client_factory(self.target, timeout_s, max_connections=1)
            found = self._probe_client.exists([self.redis_key(key)])[0]
        except SharedUnavailable:
            self.counters.add("probes_unanswered")
            return None
        except Exception as error:  # a cluster client connects (and can fail) in its constructor
            self.counters.add("probes_unanswered")
            logger.debug("Shared tier: no probe connection: %s", type(error).__name__)
            return None
        self.counters.add_many(
            {"probes": 1, "probe_misses": int(not found), "probe_seconds": time.monotonic() - start}
        )
        return found

    # -- stores and loads (I/O threads) ----------------------------------------------------
    def submit_writes(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[WriteReport]:
        """Store chunks the server does not hold; the buffers must stay valid until done."""
        finish = functools.partial(self._finish_writes, time.monotonic())
        job = submit_job(
            self._executor, list(items), lambda item: item[1].nbytes, self._write_group, finish
        )
        return self._inflight.track(job)

    def _write_group(
        self, items: list[tuple[bytes, memoryview]]
    ) -> list[tuple[int, str, Exception | None]]:
        """Per item (payload bytes, outcome, error): written, present, skipped, full, failed."""
        names = [self.redis_key(key) for key, _ in items]
        try:
            present = self._call(self.client.exists, names)
            todo = [i for i, there in enumerate(present) if not there]
            values = [(names[i], seal_parts(self.namespace, *items[i], self.signer)) for i in todo]
            replies = self._call(self.client.set_absent, values) if values else []
        except (SharedUnavailable, BreakerOpen) as error:
            skipped = isinstance(error, BreakerOpen)
            outcome = "skipped" if skipped else "failed"
            return [(p.nbytes, outcome, None) for _, p in items]
        outcomes: list[tuple[int, str, Exception | None]] = [
            (p.nbytes, "present", None) for _, p in items
        ]
        for index, reply in zip(todo, replies, strict=True):
            size = items[index][1].nbytes
            if isinstance(reply, Exception):
                full = isinstance(reply, ServerFull)
                outcomes[index] = (size, "full" if full else "failed", reply)
            else:  # SET NX lost a race to another replica: the chunk is there either way
                outcomes[index] = (size, "written" if reply else "present", None)
        return outcomes

    def _finish_writes(
        self, started: float, outcomes: list[tuple[int, str, Exception | None]]
    ) -> WriteReport:
        report = WriteReport()
        for size, outcome, _error in outcomes:
            if outcome == "written":
                report.written += 1
                report.written_bytes += size
            elif outcome == "present":
                report.present += 1
            elif outcome == "full":
                report.rejected += 1
            elif outcome == "skipped":
                report.skipped += 1
            else:
                report.failed += 1
        report.seconds = time.monotonic() - started if report.written else 0.0
        increments = report.counter_increments()
        increments.update(stores_present=report.present, stores_skipped=report.skipped)
        increments["stores_rejected_full"] = report.rejected
        self.counters.add_many(increments)
        return report

    def submit_reads(self, items: Sequence[tuple[bytes, memoryview]]) -> Future[list[bool]]:
        """Load chunks into the given buffers; per chunk True when it verified."""
        indexed = [(i, key, out) for i, (key, out) in enumerate(items)]
        finish = functools.partial(self._finish_reads, len(items), time.monotonic())
        job = submit_job(
            self._executor, indexed, lambda item: item[2].nbytes, self._read_group, finish
        )
        return self._inflight.track(job)

    def _read_group(self, items: list[tuple[int, bytes, memoryview]]) -> list[tuple[int, int]]:
        """(position, bytes loaded) of each chunk that verified into its buffer.

        A value of the expected size is read straight into the chunk's buffer and verified
        there, so a refused one may have written it: a chunk not reported loaded has a buffer
        of no meaning (the NVMe tier's reads do the same; StoreTier never reports it loaded).
        """
        names = [self.redis_key(key) for _, key, _ in items]
        mac_size = MAC_BYTES if self.signer else 0
        parts = [
            (memoryview(bytearray(HEADER_BLOCK)), out.cast("B"), memoryview(bytearray(mac_size)))
            for _, _, out in items
        ]
        try:
            values = self._call(self.client.get_into, list(zip(names, parts, strict=True)))
        except (SharedUnavailable, BreakerOpen):
            return []
        loaded, bad = [], []
        for (position, key, out), name, value, (header, payload, mac) in zip(
            items, names, values, parts, strict=True
        ):
            if value is None:
                self.counters.add("vanished")  # evicted or deleted since the lookup
                continue
            if isinstance(value, Exception):
                self.counters.add("errors")
                continue
            try:
                if isinstance(value, bool):  # True: read into the buffers
                    verify_parts(header, payload, mac, self.namespace, key, self.signer)
                else:  # the whole value (redis-py, or a length other than expected)
                    open_into(value, self.namespace, key, out, self.signer)
            except ChunkFormatError as error:
                kind = "unsigned" if isinstance(error, UnsignedValueError) else error.kind.value
                counter = "unsigned_dropped" if kind == "unsigned" else f"corrupt_{kind}"
                self.counters.add_many({"corrupt_dropped": 1, counter: 1})
                logger.warning("Shared tier: dropped value %s (%s)", name, error)
                bad.append(name)
                continue
            loaded.append((position, out.nbytes))
        if bad:
            try:
                self._call(self.client.delete, bad)
            except (SharedUnavailable, BreakerOpen):
                pass  # the next reader drops them again
        return loaded

    def _finish_reads(
        self, count: int, started: float, loaded: list[tuple[int, int]]
    ) -> list[bool]:
        results = [False] * count
        for position, _size in loaded:
            results[position] = True
        self.counters.add_many(
            {
                "reads": len(loaded),
                "read_bytes": sum(size for _, size in loaded),
                "read_seconds": time.monotonic() - started if count else 0.0,
                "read_failures": count - len(loaded),
            }
        )
        return results

    # -- housekeeping ----------------------------------------------------------------------
    def drain(self) -> None:
        """Wait for every submitted store and load."""
        self._inflight.drain()

    def stats(self) -> dict[str, float]:
        out = self.counters.snapshot()
        out.update(
            ready=float(self._ready.is_set()),
            breaker_open=float(self.breaker.state is not BreakerState.CLOSED),
            server_maxmemory_bytes=float(self.facts.maxmemory if self.facts else 0),
            breaker_opened=float(self.breaker.opened),
        )
        return out

    def close(self) -> None:
        self.drain()
        self._executor.shutdown(wait=True)
        self.client.close()
        if self._probe_client is not None:
            self._probe_client.close()
