"""The buffered engine of the NVMe tier: aiofile (caio) async I/O.

Used where the filesystem refuses O_DIRECT (overlayfs, some NFS), or when asked for. See
``direct_engine`` for why the O_DIRECT engine does not go through aiofile.

caio needs an asyncio loop; the engine runs its own on one thread. The store's I/O threads
open, checksum, verify and rename; only the reads and writes of a group of chunks go to the
loop, all at once, so caio sees the whole group in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, BinaryIO, TypeVar

from atom_tier.tiers.chunk_format import (
    HEADER_BLOCK,
    ChunkFormatError,
    align_up,
    encode_header,
    payload_checksum,
)
from atom_tier.tiers.engines import ChunkEngine, ReadItem, WriteItem, verify_read

_T = TypeVar("_T")
_ERRNO_BY_MESSAGE = {os.strerror(code): code for code in errno.errorcode}


def caio_error(exc: Exception, path: str) -> OSError:
    """caio reports I/O errors as SystemError (errno first, or only strerror's text); aiofile
    adds OSError and RuntimeError ("returned 0") of its own."""
    if isinstance(exc, OSError):
        return exc
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code is None:
        code = _ERRNO_BY_MESSAGE.get(str(exc), errno.EIO)
    return OSError(code, os.strerror(code), path)


class _LoopThread:
    """An asyncio loop running on its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="atom_tier_aiofile_loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for it (never call from the loop thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class AiofileEngine(ChunkEngine):
    """Buffered I/O through aiofile/caio."""

    name = "aiofile"

    def __init__(self, loop_thread: _LoopThread, context: Any, backend: str = "") -> None:
        self._loop_thread = loop_thread
        self.context = context
        self.name = f"aiofile/{backend}" if backend else "aiofile"

    def write_chunks(self, items: Sequence[WriteItem]) -> list[Exception | None]:
        outcomes: list[Exception | None] = [None] * len(items)
        opened: list[tuple[int, BinaryIO, bytes]] = []
        for i, (temp, _final, namespace, key, payload) in enumerate(items):
            body = payload.cast("B")
            header = encode_header(namespace, key, body.nbytes, payload_checksum(body))
            pad = align_up(body.nbytes) - body.nbytes
            data = b"".join((header, body, bytes(pad)))  # caio writes bytes objects only
            try:
                opened.append((i, open(temp, "xb", buffering=0), data))
            except OSError as exc:
                outcomes[i] = exc
        try:
            errors = self._loop_thread.run(self._write_all([(fp, d) for _i, fp, d in opened]))
        finally:
            for _i, fp, _data in opened:
                fp.close()
        for (i, _fp, _data), error in zip(opened, errors, strict=True):
            temp, final = items[i][0], items[i][1]
            try:
                if error is not None:
                    raise caio_error(error, temp)
                os.rename(temp, final)
            except OSError as exc:
                outcomes[i] = exc
        return outcomes

    def read_chunks(self, items: Sequence[ReadItem]) -> list[Exception | None]:
        outcomes: list[Exception | None] = [None] * len(items)
        opened: list[tuple[int, BinaryIO]] = []
        for i, (path, _namespace, _key, _out) in enumerate(items):
            try:
                opened.append((i, open(path, "rb", buffering=0)))
            except OSError as exc:
                outcomes[i] = exc
        sizes = [HEADER_BLOCK + items[i][3].nbytes for i, _fp in opened]
        try:
            done = self._loop_thread.run(self._read_all([fp for _i, fp in opened], sizes))
        finally:
            for _i, fp in opened:
                fp.close()
        for (i, _fp), result in zip(opened, done, strict=True):
            path, namespace, key, out = items[i]
            try:
                if isinstance(result, Exception):
                    raise caio_error(result, path)
                body = out.cast("B")
                payload_read = max(0, len(result) - HEADER_BLOCK)
                body[:payload_read] = result[HEADER_BLOCK : HEADER_BLOCK + payload_read]
                header = bytearray(HEADER_BLOCK)
                header[: min(len(result), HEADER_BLOCK)] = result[:HEADER_BLOCK]
                verify_read(header, out, payload_read, namespace, key)
            except (OSError, ChunkFormatError) as exc:
                outcomes[i] = exc
        return outcomes

    # Per file the bytes (or None for a write) or the exception, so one file's error never
    # costs the group's other files their outcome.
    async def _write_all(self, files: list[tuple[BinaryIO, bytes]]) -> list[Exception | None]:
        from aiofile import AIOFile

        async def one(fp: BinaryIO, data: bytes) -> Exception | None:
            try:
                await AIOFile.from_fp(fp, context=self.context).write(data, 0)
            except Exception as exc:
                return exc
            return None

        return list(await asyncio.gather(*(one(fp, data) for fp, data in files)))

    async def _read_all(self, files: list[BinaryIO], sizes: list[int]) -> list[bytes | Exception]:
        from aiofile import AIOFile

        async def one(fp: BinaryIO, size: int) -> bytes | Exception:
            try:
                return bytes(await AIOFile.from_fp(fp, context=self.context).read_bytes(size, 0))
            except Exception as exc:
                return exc

        return list(await asyncio.gather(*(one(fp, n) for fp, n in zip(files, sizes, strict=True))))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop_thread.run(self._close_context())
        self._loop_thread.stop()

    async def _close_context(self) -> None:
        self.context.close()


async def _aiofile_works(context: Any, directory: str) -> bool:
    from aiofile import AIOFile

    path = os.path.join(directory, f".aiofile_probe.{os.getpid()}{threading.get_ident()}")
    try:
        with open(path, "wb+", buffering=0) as fp:
            afp = AIOFile.from_fp(fp, context=context)
            await afp.write(b"atomtier", 0)
            return await afp.read_bytes(8, 0) == b"atomtier"
    except Exception:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


# Buffered I/O is synchronous inside Linux AIO's io_submit (it would block the loop) and
# punted to kernel workers by io_uring: caio's thread back-ends were 2-4x faster for it here.
_BACKEND_ORDER = ("thread_aio", "python_aio", "linux_uring", "linux_aio")


async def _first_working_backend(directory: str) -> tuple[Any, str] | None:
    import caio

    def rank(variant: Any) -> int:
        name = variant.__name__.rsplit(".", 1)[-1].replace("_asyncio", "")
        return _BACKEND_ORDER.index(name) if name in _BACKEND_ORDER else len(_BACKEND_ORDER)

    loop = asyncio.get_running_loop()
    for variant in sorted(caio.variants_asyncio, key=rank):
        try:
            context = variant.AsyncioContext(loop=loop)
        except Exception:  # e.g. io_uring_setup refused by a seccomp profile
            continue
        if await _aiofile_works(context, directory):
            return context, variant.__name__.rsplit(".", 1)[-1].replace("_asyncio", "")
        with contextlib.suppress(Exception):
            context.close()
    return None


def make_aiofile_engine(directory: str) -> AiofileEngine:
    """aiofile engine on the first caio back-end that works here."""
    loop_thread = _LoopThread()
    found = loop_thread.run(_first_working_backend(directory))
    if found is None:
        loop_thread.stop()
        raise OSError(errno.EIO, f"no aiofile back-end can read and write files in {directory}")
    return AiofileEngine(loop_thread, *found)
