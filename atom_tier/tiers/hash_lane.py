"""Payload checksums computed beside the I/O: each I/O thread hands its buffers to a partner
thread that hashes them in order while the I/O thread goes on with its next read or write.

XXH3 releases the GIL for pieces of 64 KiB and more, as do ``preadv``/``pwritev``: on two
cores the hash of one piece and the transfer of the next really run at the same time. A lane
is one I/O thread's partner; the I/O thread alone feeds it, so pieces arrive in order and a
lane needs no lock of its own (the queue is the only thing both threads touch).

Small payloads are hashed on the I/O thread itself (:class:`InlineHashing`, same interface):
for them the hand-off (three queue puts and a thread wake-up per chunk) costs more than the
hash, on two cores (docs/benchmarks.md, "Small chunks hashed on the I/O thread").
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from atom_tier.tiers.chunk_format import ChecksumKind, PayloadHasher, payload_hasher

Piece = memoryview | bytes | bytearray
# (hasher kind to start a chunk with | a piece to hash | the future of the chunk's checksum)
_Item = ChecksumKind | Piece | Future[int] | None


class HashLane:
    """One partner thread hashing chunks piece by piece, in the order they are fed.

    ``begin`` starts a chunk, ``feed`` hands it its next piece (which must stay unchanged
    until the chunk's future is done), ``end`` returns the future of its checksum.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def begin(self, kind: ChecksumKind) -> None:
        self._queue.put(kind)

    def feed(self, piece: Piece) -> None:
        self._queue.put(piece)

    def end(self) -> Future[int]:
        future: Future[int] = Future()
        self._queue.put(future)
        return future

    def checksum_of(self, payload: Piece, kind: ChecksumKind) -> Future[int]:
        """A whole payload's checksum, computed on the lane."""
        self.begin(kind)
        self.feed(payload)
        return self.end()

    def close(self) -> None:
        """Stop the thread once it has hashed everything fed so far."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        hasher: PayloadHasher | None = None
        failure: BaseException | None = None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, Future):
                if failure is not None or hasher is None:
                    item.set_exception(failure or RuntimeError("chunk ended before it began"))
                else:
                    item.set_result(hasher.intdigest())
                hasher, failure = None, None
            elif isinstance(item, ChecksumKind):
                hasher, failure = payload_hasher(item), None
            elif failure is None and hasher is not None:
                try:
                    hasher.update(item)
                except BaseException as exc:  # never expected; reported on the chunk's future
                    failure = exc


class InlineHashing:
    """A lane's interface for one chunk at a time, hashing on the calling thread: the
    returned futures are already done. Not shared between threads."""

    def __init__(self) -> None:
        self._hasher: PayloadHasher | None = None

    def begin(self, kind: ChecksumKind) -> None:
        self._hasher = payload_hasher(kind)

    def feed(self, piece: Piece) -> None:
        assert self._hasher is not None, "piece fed before begin"
        self._hasher.update(piece)

    def end(self) -> Future[int]:
        future: Future[int] = Future()
        assert self._hasher is not None, "chunk ended before it began"
        future.set_result(self._hasher.intdigest())
        self._hasher = None
        return future

    def checksum_of(self, payload: Piece, kind: ChecksumKind) -> Future[int]:
        self.begin(kind)
        self.feed(payload)
        return self.end()


class HashLanes:
    """A lane per calling thread, made on first use; ``close`` stops them all."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._local = threading.local()
        self._lock = threading.Lock()
        self._lanes: list[HashLane] = []
        self._closed = False

    def mine(self) -> HashLane:
        lane: HashLane | None = getattr(self._local, "lane", None)
        if self._closed:  # a closed lane would never answer
            raise RuntimeError("the checksum threads were stopped")
        if lane is None:
            with self._lock:
                lane = HashLane(f"{self._prefix}_{len(self._lanes)}")
                self._lanes.append(lane)
            self._local.lane = lane
        return lane

    def close(self) -> None:
        with self._lock:
            self._closed = True
            lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.close()
