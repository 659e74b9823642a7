"""The O_DIRECT engine's checksum beside its I/O: large payloads hashed piece by piece on a
partner thread while the next piece is read or written, header written last; small ones hashed
on the I/O thread itself. Real files throughout; what is tested is that the overlap never lets a
bad chunk through and never mixes chunks up.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

from atom_tier.tiers import direct_engine
from atom_tier.tiers.chunk_format import (
    HEADER_BLOCK,
    ChecksumKind,
    chunk_relpath,
    decode_header,
    file_size_for,
    payload_checksum,
)
from atom_tier.tiers.hash_lane import HashLane, InlineHashing
from atom_tier.tiers.nvme_store import NvmeChunkStore
from tests.tiers.conftest import StoreFactory, disk_usage, engines, payload_for

PIECE = direct_engine.READ_PIECE
# Hashed on the lane, read in whole pieces and one partial one: the read loop's every branch.
BIG = 3 * PIECE + 8192
assert BIG >= direct_engine.LANE_FROM
SMALL = 128 * 1024
CAP = 64 * file_size_for(BIG)
pytestmark = pytest.mark.parametrize("engine", [p for p in engines() if p != "aiofile"])


def _path(store: NvmeChunkStore, key: bytes) -> Path:
    return store.root / chunk_relpath(store.digest(key))


def _aligned_copy(data: bytes) -> memoryview:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return memoryview(buf)


def _read(store: NvmeChunkStore, key: bytes, size: int, aligned: bool = True) -> bytes | None:
    out = memoryview(mmap.mmap(-1, size)) if aligned else memoryview(bytearray(size))
    return bytes(out) if store.read(key, out) else None


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("aligned", [True, False])
def test_multi_piece_chunks_round_trip_and_keep_the_format(
    tmp_path: Path, make_store: StoreFactory, engine: str, aligned: bool
) -> None:
    """Large (body first, header last) and small chunks, from and into aligned and
    unaligned buffers; the header on disk holds the one-shot checksum of the payload, so
    files stay readable by any reader of the format (the buffered engine checks below)."""
    store = make_store(tmp_path, CAP, engine=engine)
    sizes = {b"big": BIG, b"small": SMALL, b"one-piece": PIECE}
    for key, size in sizes.items():
        payload = payload_for(key, size)
        source = _aligned_copy(payload) if aligned else memoryview(bytes(payload))
        assert store.write(key, source).written == 1
    for key, size in sizes.items():
        assert _read(store, key, size, aligned) == payload_for(key, size)
        with open(_path(store, key), "rb") as f:
            header = decode_header(f.read(HEADER_BLOCK))
        assert header.checksum == payload_checksum(payload_for(key, size))
    store.close()
    buffered = make_store(tmp_path, CAP, engine="aiofile")
    for key, size in sizes.items():
        assert _read(buffered, key, size) == payload_for(key, size)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(HEADER_BLOCK + 5, id="first piece"),
        pytest.param(HEADER_BLOCK + PIECE, id="piece boundary"),
        pytest.param(HEADER_BLOCK + BIG - 1, id="last piece"),
    ],
)
def test_a_flipped_byte_in_any_piece_is_a_miss(
    tmp_path: Path, make_store: StoreFactory, engine: str, where: int
) -> None:
    store = make_store(tmp_path, CAP, engine=engine)
    for key in (b"victim", b"other"):
        store.write(key, _aligned_copy(payload_for(key, BIG)))
    _flip(_path(store, b"victim"), where)
    assert _read(store, b"victim", BIG) is None
    stats = store.stats()
    assert stats["corrupt_checksum"] == 1 and stats["faults"] == 0
    assert not _path(store, b"victim").exists() and not store.lookup(b"victim")
    assert _read(store, b"other", BIG) == payload_for(b"other", BIG)


@pytest.mark.parametrize(
    "length",
    [
        pytest.param(0, id="empty"),
        pytest.param(100, id="inside the header"),
        pytest.param(HEADER_BLOCK, id="header only"),
        pytest.param(HEADER_BLOCK + PIECE, id="first piece only"),
        pytest.param(HEADER_BLOCK + BIG - 4096, id="all but the last block"),
    ],
)
def test_a_short_file_is_a_truncated_miss(
    tmp_path: Path, make_store: StoreFactory, engine: str, length: int
) -> None:
    store = make_store(tmp_path, CAP, engine=engine)
    for key in (b"cut", b"other"):
        store.write(key, _aligned_copy(payload_for(key, BIG)))
    os.truncate(_path(store, b"cut"), length)
    assert _read(store, b"cut", BIG) is None
    assert store.stats()["corrupt_truncated"] == 1
    assert _read(store, b"other", BIG) == payload_for(b"other", BIG)
    assert store.stats()["usage_bytes"] == disk_usage(tmp_path)


def test_one_bad_chunk_in_a_group_fails_only_itself(
    tmp_path: Path, make_store: StoreFactory, engine: str
) -> None:
    """Small chunks of one job share an I/O thread, each hashed on it after its read: each
    verdict must land on its own chunk."""
    store = make_store(tmp_path, CAP, engine=engine)
    keys = [b"%d" % i for i in range(8)]  # 8 x 128 KiB: one group
    assert store.submit_writes([(k, _aligned_copy(payload_for(k, SMALL))) for k in keys]).result()
    _flip(_path(store, keys[3]), HEADER_BLOCK + SMALL - 1)
    _flip(_path(store, keys[6]), HEADER_BLOCK)
    outs = [memoryview(mmap.mmap(-1, SMALL)) for _ in keys]
    verdicts = store.submit_reads(list(zip(keys, outs, strict=True))).result()
    assert verdicts == [i not in (3, 6) for i in range(8)]
    for key, out, ok in zip(keys, outs, verdicts, strict=True):
        if ok:
            assert bytes(out) == payload_for(key, SMALL)
    assert store.stats()["corrupt_checksum"] == 2


def test_large_and_small_chunks_mixed_in_a_group_each_get_their_own_verdict(
    tmp_path: Path, make_store: StoreFactory, engine: str
) -> None:
    """One I/O thread, large chunks hashed on its lane (checksums trailing the reads) and small
    ones on the thread itself, interleaved: a bad chunk of either kind fails only itself."""
    store = make_store(tmp_path, CAP, engine=engine, io_threads=1)
    sizes = [BIG, SMALL, BIG, SMALL, BIG, SMALL]
    keys = [b"mixed-%d" % i for i in range(len(sizes))]
    writes = [(k, _aligned_copy(payload_for(k, n))) for k, n in zip(keys, sizes, strict=True)]
    assert store.submit_writes(writes).result().written == len(keys)
    _flip(_path(store, keys[1]), HEADER_BLOCK + 5)  # small
    _flip(_path(store, keys[2]), HEADER_BLOCK + BIG - 1)  # large, last piece
    outs = [memoryview(mmap.mmap(-1, n)) for n in sizes]
    verdicts = store.submit_reads(list(zip(keys, outs, strict=True))).result()
    assert verdicts == [True, False, False, True, True, True]
    for key, size, out, ok in zip(keys, sizes, outs, verdicts, strict=True):
        if ok:
            assert bytes(out) == payload_for(key, size)
    assert store.stats()["corrupt_checksum"] == 2


def test_a_read_error_in_a_later_piece_leaves_the_lane_in_order(
    tmp_path: Path, make_store: StoreFactory, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO (faked: it cannot be produced here) on the second piece of a chunk whose first
    piece is already with the lane: a miss, and the next chunks on the same thread verify."""
    store = make_store(tmp_path, CAP, engine=engine, io_threads=1)
    for key in (b"broken", b"next"):
        store.write(key, _aligned_copy(payload_for(key, BIG)))
    real_pread = direct_engine.pread_into
    broken = os.stat(_path(store, b"broken")).st_ino

    def failing_later_pieces(fd: int, buffers: list[memoryview], offset: int = 0) -> int:
        if offset > 0 and os.fstat(fd).st_ino == broken:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real_pread(fd, buffers, offset)

    monkeypatch.setattr(direct_engine, "pread_into", failing_later_pieces)
    outs = [memoryview(mmap.mmap(-1, BIG)) for _ in range(2)]
    verdicts = store.submit_reads([(b"broken", outs[0]), (b"next", outs[1])]).result()
    assert verdicts == [False, True] and bytes(outs[1]) == payload_for(b"next", BIG)
    assert store.stats()["fault_eio"] == 1
    assert _read(store, b"next", BIG) == payload_for(b"next", BIG)


def test_a_failed_header_write_publishes_nothing(
    tmp_path: Path, make_store: StoreFactory, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header goes last (after the body): EIO there (faked) leaves no chunk and no temp
    file, and nothing counted."""
    store = make_store(tmp_path, CAP, engine=engine)
    real_pwrite = direct_engine.pwrite_all

    def failing_header(fd: int, buffers: list[memoryview], offset: int = 0) -> int:
        if offset == 0:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real_pwrite(fd, buffers, offset)

    monkeypatch.setattr(direct_engine, "pwrite_all", failing_header)
    assert store.write(b"k", _aligned_copy(payload_for(b"k", BIG))).failed == 1
    assert not store.lookup(b"k") and not list(tmp_path.glob("??/*"))
    assert store.stats()["usage_bytes"] == 0


def test_a_lane_hashes_pieces_to_the_one_shot_checksum(engine: str) -> None:
    lane = HashLane("test_lane")
    try:
        payload = payload_for(b"lane", BIG)
        futures = []
        for kind in ChecksumKind:
            lane.begin(kind)
            for start in range(0, BIG, 100_000):
                lane.feed(memoryview(payload)[start : start + 100_000])
            futures.append((kind, lane.end()))
        futures.append((ChecksumKind.XXH3_64, lane.checksum_of(payload[:5], ChecksumKind.XXH3_64)))
        for kind, future in futures[:-1]:
            assert future.result(10) == payload_checksum(payload, kind)
        assert futures[-1][1].result(10) == payload_checksum(payload[:5])
    finally:
        lane.close()


def test_inline_hashing_matches_the_one_shot_checksum(engine: str) -> None:
    """The I/O thread's own hashing of small chunks gives the header's checksum, piece by
    piece or whole, and its futures are settled when returned."""
    payload = payload_for(b"inline", SMALL)
    for kind in ChecksumKind:
        inline = InlineHashing()
        inline.begin(kind)
        for start in range(0, SMALL, 10_000):
            inline.feed(memoryview(payload)[start : start + 10_000])
        future = inline.end()
        assert future.done() and future.result() == payload_checksum(payload, kind)
    whole = InlineHashing().checksum_of(payload, ChecksumKind.XXH3_64)
    assert whole.done() and whole.result() == payload_checksum(payload)
