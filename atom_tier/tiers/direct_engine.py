"""The NVMe tier's O_DIRECT engine (``direct``), and the probe that says whether it can run.

One of the tier's two engines (:mod:`.engines` chooses; :mod:`.aiofile_engine` is the other):

``direct``  O_DIRECT with aligned buffers. Page-aligned DRAM-tier slots are written from and
            read into directly (zero copy); anything unaligned goes through a bounce buffer
            from an mmap-backed aligned pool. The positional syscalls (``pwritev``/``preadv``)
            release the GIL, so the store's I/O threads overlap them.
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

from atom_tier.tiers.chunk_format import (
    ALIGNMENT,
    HEADER_BLOCK,
    ChunkFormatError,
    align_up,
    encode_header,
    payload_checksum,
)
from atom_tier.tiers.engines import ChunkEngine, ReadItem, WriteItem, verify_read

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
# Linux moves at most this many bytes per read/write call.
_MAX_IO = 0x7FFFF000


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
    """O_DIRECT with aligned buffers, positional syscalls (which release the GIL)."""

    name = "direct"
    o_direct = True

    def __init__(self) -> None:
        self.pool = AlignedPool()

    def write_chunks(self, items: Sequence[WriteItem]) -> list[Exception | None]:
        out: list[Exception | None] = []
        for item in items:
            try:
                self._write_chunk(*item)
                out.append(None)
            except OSError as exc:
                out.append(exc)
        return out

    def read_chunks(self, items: Sequence[ReadItem]) -> list[Exception | None]:
        out: list[Exception | None] = []
        for item in items:
            try:
                self._read_chunk(*item)
                out.append(None)
            except (OSError, ChunkFormatError) as exc:
                out.append(exc)
        return out

    def _write_chunk(
        self, temp: str, final: str, namespace: bytes, key: bytes, payload: memoryview
    ) -> None:
        header = encode_header(namespace, key, payload.nbytes, payload_checksum(payload))
        self._write_file(temp, header, payload)
        os.rename(temp, final)

    def _read_chunk(self, path: str, namespace: bytes, key: bytes, out: memoryview) -> None:
        header = bytearray(HEADER_BLOCK)
        got = self._read_file(path, memoryview(header), out)
        verify_read(header, out, got, namespace, key)

    def _write_file(self, path: str, header: bytes, payload: memoryview) -> None:
        head = self.pool.take(HEADER_BLOCK)
        bounce: mmap.mmap | None = None
        try:
            head[:] = header
            body = payload.cast("B")
            if not is_aligned(body):
                bounce = self.pool.take(body.nbytes)
                bounce[: body.nbytes] = body
                bounce[body.nbytes :] = bytes(len(bounce) - body.nbytes)
                body = memoryview(bounce)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_DIRECT | os.O_CLOEXEC)
            try:
                pwrite_all(fd, [memoryview(head), body])
            finally:
                os.close(fd)
        finally:
            self.pool.give(head)
            if bounce is not None:
                self.pool.give(bounce)

    def _read_file(self, path: str, header_out: memoryview, payload_out: memoryview) -> int:
        head = self.pool.take(HEADER_BLOCK)
        body = payload_out.cast("B")
        bounce: mmap.mmap | None = None
        try:
            target = body
            if not is_aligned(body):
                bounce = self.pool.take(body.nbytes)
                target = memoryview(bounce)
            fd = os.open(path, os.O_RDONLY | O_DIRECT | os.O_CLOEXEC)
            try:
                got = pread_into(fd, [memoryview(head), target])
            finally:
                os.close(fd)
            header_out[:HEADER_BLOCK] = head
            payload_read = max(0, min(got - HEADER_BLOCK, body.nbytes))
            if bounce is not None and payload_read:
                body[:payload_read] = target[:payload_read]
            return payload_read
        finally:
            self.pool.give(head)
            if bounce is not None:
                self.pool.give(bounce)

    def close(self) -> None:
        self.pool.close()


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
