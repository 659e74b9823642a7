"""The NVMe tier's O_DIRECT engine (``direct``), and the probe that says whether it can run.

One of the tier's two engines (:mod:`.engines` chooses; :mod:`.aiofile_engine` is the other):

``direct``  O_DIRECT with aligned buffers. Page-aligned DRAM-tier slots are written from and
            read into directly (zero copy); anything unaligned goes through a bounce buffer
            from an mmap-backed aligned pool. The positional syscalls (``pwritev``/``preadv``)
            release the GIL, so the store's I/O threads overlap them. A large payload's
            checksum is computed on the I/O thread's hash lane (:mod:`.hash_lane`) while
            the I/O goes on: on write the body goes out while it is hashed and the header,
            which holds the checksum, last; on read each piece is hashed while the next
            one is read. A small payload is hashed on the I/O thread, before its one write
            or after its one read. Nothing is published or returned before its checksum
            is settled.
``aiofile`` Buffered I/O through aiofile (caio: io_uring, Linux AIO or threads, whichever
            works here), for filesystems that refuse O_DIRECT (overlayfs, some NFS).

Why aiofile does not carry the O_DIRECT path: caio only writes ``bytes`` objects and reads
into buffers it allocates itself, neither aligned beyond 16 bytes. On a disk whose DMA
alignment is 512 bytes (this machine's virtio disk) every O_DIRECT request it issues fails
with EINVAL, on all four caio back-ends (verified). Aligned buffers need our own syscalls.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, wait

from atom_tier.tiers.chunk_format import (
    ALIGNMENT,
    DEFAULT_CHECKSUM,
    HEADER_BLOCK,
    ChecksumKind,
    ChunkFormatError,
    ChunkHeader,
    CorruptionKind,
    align_up,
    check_header,
    check_payload,
    encode_header,
)
from atom_tier.tiers.engines import ChunkEngine, ReadItem, WriteItem
from atom_tier.tiers.hash_lane import HashLane, HashLanes, InlineHashing

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
# Linux moves at most this many bytes per read/write call.
_MAX_IO = 0x7FFFF000
# A payload is read in pieces of this size; each piece is hashed while the next is read, so
# only the last piece's hash is not hidden behind I/O.
READ_PIECE = 1 << 20
# Payloads of this size and more are hashed on the lane: written body first and header
# (which holds the checksum) last, so the body's write overlaps its own checksum, and read
# piece by piece. Smaller ones are hashed on the I/O thread, written header and body in one
# write and read in one read: for 128-256 KiB chunks the hand-off to the lane cost more than
# the hash (docs/benchmarks.md, "Small chunks hashed on the I/O thread"); at 2 MiB either
# way measured the same.
LANE_FROM = 1 << 20


def buffer_address(view: memoryview) -> int | None:
    """Address of a writable buffer, None for read-only ones (those are bounced)."""
    if view.readonly:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def is_aligned(view: memoryview) -> bool:
    address = buffer_address(view)
    return address is not None and address % ALIGNMENT == 0 and view.nbytes % ALIGNMENT == 0


class AlignedPool:
    """Reusable page-aligned buffers (anonymous mmaps), grown on demand, per size.

    Buffers are never closed explicitly: a memoryview kept alive by an exception traceback
    would make ``mmap.close`` raise; dropping the last reference unmaps them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[int, list[mmap.mmap]] = {}

    def take(self, size: int) -> mmap.mmap:
        size = align_up(max(size, ALIGNMENT))
        with self._lock:
            stack = self._free.get(size)
            if stack:
                return stack.pop()
        return mmap.mmap(-1, size)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            stack = self._free.setdefault(len(buffer), [])
            if len(stack) < 16:
                stack.append(buffer)

    def close(self) -> None:
        with self._lock:
            self._free.clear()


def _advance(buffers: list[memoryview], done: int) -> list[memoryview]:
    """Drop ``done`` bytes from the front of an iovec list (after a short transfer)."""
    rest = []
    for buf in buffers:
        if done >= buf.nbytes:
            done -= buf.nbytes
            continue
        rest.append(buf[done:])
        done = 0
    return rest


def pwrite_all(fd: int, buffers: list[memoryview], offset: int = 0) -> int:
    total = 0
    while buffers:
        written = os.pwritev(fd, _cap(buffers), offset + total)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        total += written
        buffers = _advance(buffers, written)
    return total


def pread_into(fd: int, buffers: list[memoryview], offset: int = 0) -> int:
    """Fill ``buffers`` from ``offset``; returns fewer bytes than asked only at end of file."""
    total = 0
    while buffers:
        got = os.preadv(fd, _cap(buffers), offset + total)
        if got <= 0:
            break
        total += got
        buffers = _advance(buffers, got)
    return total


def _cap(buffers: list[memoryview]) -> list[memoryview]:
    out, room = [], _MAX_IO
    for buf in buffers:
        if room <= 0:
            break
        out.append(buf[:room])
        room -= min(buf.nbytes, room)
    return out


class DirectEngine(ChunkEngine):
    """O_DIRECT with aligned buffers, positional syscalls (which release the GIL), and each
    large payload's checksum computed on the I/O thread's hash lane while the I/O goes on."""

    name = "direct"
    o_direct = True

    def __init__(self) -> None:
        self.pool = AlignedPool()
        self.lanes = HashLanes("atom_tier_nvme_hash")

    def write_chunks(self, items: Sequence[WriteItem]) -> list[Exception | None]:
        lane = self.lanes.mine()
        # The lane's checksums are queued first: it hashes large chunk k+1 while chunk k is
        # written, and a large chunk's own body while it is written.
        queued = [
            lane.checksum_of(item[4].cast("B"), DEFAULT_CHECKSUM)
            if item[4].nbytes >= LANE_FROM
            else None
            for item in items
        ]
        out: list[Exception | None] = []
        try:
            for item, checksum in zip(items, queued, strict=True):
                if checksum is None:
                    checksum = InlineHashing().checksum_of(item[4].cast("B"), DEFAULT_CHECKSUM)
                try:
                    self._write_chunk(*item, checksum)
                    out.append(None)
                except OSError as exc:
                    out.append(exc)
        finally:
            wait([c for c in queued if c is not None])  # the lane reads the caller's buffers
        return out

    def read_chunks(self, items: Sequence[ReadItem]) -> list[Exception | None]:
        lane = self.lanes.mine()
        out: list[Exception | None] = [None] * len(items)
        started: list[tuple[int, _ReadChunk]] = []
        try:
            for index, item in enumerate(items):
                try:
                    hashing = lane if item[3].nbytes >= LANE_FROM else InlineHashing()
                    started.append((index, self._read_chunk(hashing, *item)))
                except (OSError, ChunkFormatError) as exc:
                    out[index] = exc
        finally:
            wait([chunk.checksum for _index, chunk in started if chunk.checksum is not None])
        for index, chunk in started:
            try:
                chunk.check()
            except ChunkFormatError as exc:
                out[index] = exc
        return out

    def _write_chunk(
        self,
        temp: str,
        final: str,
        namespace: bytes,
        key: bytes,
        payload: memoryview,
        checksum: Future[int],
    ) -> None:
        head = self.pool.take(HEADER_BLOCK)
        bounce: mmap.mmap | None = None
        try:
            body = payload.cast("B")
            size = body.nbytes
            if not is_aligned(body):
                bounce = self.pool.take(size)
                bounce[:size] = body
                bounce[size:] = bytes(len(bounce) - size)
                body = memoryview(bounce)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_DIRECT | os.O_CLOEXEC)
            try:
                if size >= LANE_FROM:  # body first, its checksum computed meanwhile
                    pwrite_all(fd, [body], HEADER_BLOCK)
                    head[:] = encode_header(namespace, key, size, checksum.result())
                    pwrite_all(fd, [memoryview(head)], 0)
                else:  # hashed on this thread already: one write
                    head[:] = encode_header(namespace, key, size, checksum.result())
                    pwrite_all(fd, [memoryview(head), body], 0)
            finally:
                os.close(fd)
            os.rename(temp, final)  # published only once header and body are on disk
        finally:
            self.pool.give(head)
            if bounce is not None:
                self.pool.give(bounce)

    def _read_chunk(
        self,
        lane: HashLane | InlineHashing,
        path: str,
        namespace: bytes,
        key: bytes,
        out: memoryview,
    ) -> _ReadChunk:
        """Read a chunk piece by piece, each piece hashed on ``lane`` while the next is read
        (or at once, inline); header problems raise here, the payload's are found by
        ``_ReadChunk.check``."""
        body = out.cast("B")
        size = body.nbytes
        head = self.pool.take(HEADER_BLOCK)
        bounce: mmap.mmap | None = None
        chunk: _ReadChunk | None = None
        try:
            target = body
            if not is_aligned(body):
                bounce = self.pool.take(size)
                target = memoryview(bounce)
            fd = os.open(path, os.O_RDONLY | O_DIRECT | os.O_CLOEXEC)
            try:
                # Pieces only where the lane hashes one while the next is read.
                piece = READ_PIECE if isinstance(lane, HashLane) else target.nbytes
                asked = min(piece, target.nbytes)
                got = pread_into(fd, [memoryview(head), target[:asked]]) - HEADER_BLOCK
                if got < 0:
                    raise ChunkFormatError(CorruptionKind.TRUNCATED, "no whole header block")
                header = check_header(
                    memoryview(head), namespace=namespace, key=key, payload_len=size
                )
                lane.begin(ChecksumKind(header.checksum_kind))
                chunk = _ReadChunk(header)
                done = 0
                while True:
                    if got > 0 and done < size:
                        end = min(done + got, size)
                        if bounce is not None:
                            body[done:end] = target[done:end]
                        lane.feed(body[done:end])
                    done += got
                    if got < asked or done >= target.nbytes:
                        break  # end of file, or all of it
                    asked = min(piece, target.nbytes - done)
                    got = pread_into(fd, [target[done : done + asked]], HEADER_BLOCK + done)
                chunk.payload_read = min(done, size)
            finally:
                os.close(fd)
                if chunk is not None:
                    chunk.checksum = lane.end()
            return chunk
        except BaseException:  # the lane may still be hashing the caller's buffer
            if chunk is not None and chunk.checksum is not None:
                wait([chunk.checksum])
            raise
        finally:
            self.pool.give(head)
            if bounce is not None:
                self.pool.give(bounce)

    def close(self) -> None:
        self.lanes.close()
        self.pool.close()


class _ReadChunk:
    """A chunk read with a checked header, its payload checksum still being computed."""

    def __init__(self, header: ChunkHeader) -> None:
        self.header = header
        self.payload_read = 0
        self.checksum: Future[int] | None = None

    def check(self) -> None:
        """Raise ChunkFormatError unless the whole payload arrived with its checksum."""
        assert self.checksum is not None  # set before the chunk leaves _read_chunk
        complete = self.payload_read >= self.header.payload_len
        check_payload(self.header, self.payload_read, self.checksum.result() if complete else None)


def probe_o_direct(directory: str | os.PathLike[str]) -> bool:
    """Whether O_DIRECT write + read back with aligned buffers works in ``directory``.

    False where the filesystem refuses O_DIRECT (EINVAL, EOPNOTSUPP); any other OSError (no
    such directory, not writable, disk full) is raised: that is not an answer about O_DIRECT.
    """
    if not O_DIRECT:
        return False
    path = os.path.join(directory, f".o_direct_probe.{os.getpid()}.{threading.get_ident()}")
    buf = mmap.mmap(-1, ALIGNMENT)
    back = mmap.mmap(-1, ALIGNMENT)
    try:
        buf[:8] = b"atomtier"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | O_DIRECT, 0o644)
        try:
            if os.pwritev(fd, [buf], 0) != ALIGNMENT:
                return False
            return os.preadv(fd, [back], 0) == ALIGNMENT and back[:8] == b"atomtier"
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    finally:
        buf.close()
        back.close()
        with contextlib.suppress(OSError):
            os.remove(path)
