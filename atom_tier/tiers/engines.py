"""The NVMe tier's I/O engine contract, and the choice between its two engines.

``direct`` (:mod:`.direct_engine`): O_DIRECT with aligned buffers, zero copy. ``aiofile``
(:mod:`.aiofile_engine`): buffered I/O through aiofile, for filesystems that refuse O_DIRECT.
Both are called from the tier's I/O threads and follow :class:`ChunkEngine`.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Sequence

from atom_tier.tiers.chunk_format import verify_chunk

# (temp path, final path, namespace, key, payload) and (path, namespace, key, out buffer)
WriteItem = tuple[str, str, bytes, bytes, memoryview]
ReadItem = tuple[str, bytes, bytes, memoryview]


class ChunkEngine(ABC):
    """Writes and reads whole chunk files (header block + payload).

    Both calls block and run on the tier's I/O threads; each handles one group of chunks
    back to back and reports per chunk instead of raising.
    """

    name = "engine"
    o_direct = False

    @abstractmethod
    def write_chunks(self, items: Sequence[WriteItem]) -> list[Exception | None]:
        """Checksum, write ``temp``, publish it as ``final`` (rename); per chunk None or the
        OSError that stopped it (its temp file may be left for the caller to remove)."""

    @abstractmethod
    def read_chunks(self, items: Sequence[ReadItem]) -> list[Exception | None]:
        """Fill each buffer with its verified payload; per chunk None, an OSError or a
        ChunkFormatError."""

    def close(self) -> None:
        return


def verify_read(
    header: bytearray | memoryview, out: memoryview, got: int, namespace: bytes, key: bytes
) -> None:
    verify_chunk(header, out.cast("B"), got, namespace=namespace, key=key)


def make_engine(directory: str, kind: str) -> ChunkEngine:
    """``kind``: "auto" (direct when O_DIRECT works here, else aiofile), "direct", "aiofile"."""
    if kind not in ("auto", "direct", "aiofile"):
        raise ValueError(f"unknown NVMe tier I/O engine {kind!r}: use auto, direct or aiofile")
    from atom_tier.tiers.direct_engine import DirectEngine, probe_o_direct

    try:
        direct = kind != "aiofile" and probe_o_direct(directory)
    except OSError:
        direct = False  # the directory's own fault: the store reports it when it writes
    if kind == "direct" and not direct:
        raise OSError(errno.EINVAL, f"O_DIRECT is not supported in {directory}")
    if direct:
        return DirectEngine()
    from atom_tier.tiers.aiofile_engine import make_aiofile_engine

    return make_aiofile_engine(directory)
