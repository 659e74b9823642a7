"""The buffered engine of the NVMe tier: aiofile (caio) async I/O.

Used where the filesystem refuses O_DIRECT (overlayfs, some NFS), or when asked for. See
``aio`` for why the O_DIRECT engine does not go through aiofile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from atom_tier.tiers.aio import ChunkEngine
from atom_tier.tiers.chunk_format import HEADER_BLOCK, align_up

_ERRNO_BY_MESSAGE = {os.strerror(code): code for code in errno.errorcode}


def caio_error(exc: SystemError, path: str) -> OSError:
    """caio reports I/O errors as SystemError (errno first, or only strerror's text)."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code is None:
        code = _ERRNO_BY_MESSAGE.get(str(exc), errno.EIO)
    return OSError(code, os.strerror(code), path)


class AiofileEngine(ChunkEngine):
    """Buffered I/O through aiofile/caio (file opening/closing in the thread pool)."""

    name = "aiofile"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        context: Any,
        backend: str = "",
    ) -> None:
        super().__init__(loop, executor)
        self.context = context
        self.name = f"aiofile/{backend}" if backend else "aiofile"

    async def write_file(self, path: str, header: bytes, payload: memoryview) -> None:
        from aiofile import AIOFile

        body = payload.cast("B")
        pad = align_up(body.nbytes) - body.nbytes
        data = b"".join((header, body, bytes(pad)))  # caio writes bytes objects only
        fp = await self.run(open, path, "xb", 0)
        try:
            await AIOFile.from_fp(fp, context=self.context).write(data, 0)
        except SystemError as exc:
            raise caio_error(exc, path) from exc
        finally:
            await self.run(fp.close)

    async def read_file(self, path: str, header_out: memoryview, payload_out: memoryview) -> int:
        from aiofile import AIOFile

        body = payload_out.cast("B")
        fp = await self.run(open, path, "rb", 0)
        try:
            data = await AIOFile.from_fp(fp, context=self.context).read_bytes(
                HEADER_BLOCK + body.nbytes, 0
            )
        except SystemError as exc:
            raise caio_error(exc, path) from exc
        finally:
            await self.run(fp.close)
        header_out[: min(len(data), HEADER_BLOCK)] = data[:HEADER_BLOCK]
        payload_read = max(0, len(data) - HEADER_BLOCK)
        body[:payload_read] = data[HEADER_BLOCK : HEADER_BLOCK + payload_read]
        return payload_read

    def close(self) -> None:
        with contextlib.suppress(Exception):
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


async def make_aiofile_engine(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor, directory: str
) -> AiofileEngine:
    """aiofile engine on the first caio back-end that works here."""
    import caio

    def rank(variant: Any) -> int:
        name = variant.__name__.rsplit(".", 1)[-1].replace("_asyncio", "")
        return _BACKEND_ORDER.index(name) if name in _BACKEND_ORDER else len(_BACKEND_ORDER)

    for variant in sorted(caio.variants_asyncio, key=rank):
        try:
            context = variant.AsyncioContext(loop=loop)
        except Exception:  # e.g. io_uring_setup refused by a seccomp profile
            continue
        if await _aiofile_works(context, directory):
            backend = variant.__name__.rsplit(".", 1)[-1].replace("_asyncio", "")
            return AiofileEngine(loop, executor, context, backend)
        with contextlib.suppress(Exception):
            context.close()
    raise OSError(errno.EIO, f"no aiofile back-end can read and write files in {directory}")
