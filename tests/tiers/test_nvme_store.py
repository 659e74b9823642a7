"""NvmeChunkStore on real files: round trips, the cap, LRU eviction, restart, corruption."""

from __future__ import annotations

import os
import random
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from atom_tier.sizing import GIB, auto_capacity
from atom_tier.tiers import chunk_space, nvme_store
from atom_tier.tiers.chunk_format import HEADER_BLOCK, chunk_relpath, file_size_for
from atom_tier.tiers.nvme_store import NvmeChunkStore
from atom_tier.tiers.rebuild import auto_capacity_bytes
from tests.tiers.conftest import (
    StoreFactory,
    chunk_files,
    disk_usage,
    engines,
    fs_used_bytes,
    payload_for,
)

CHUNK = 64 * 1024  # one 128-token block of the tiny test model


def _path(store: NvmeChunkStore, key: bytes) -> Path:
    return store.root / chunk_relpath(store.digest(key))


def _read_back(store: NvmeChunkStore, key: bytes, size: int = CHUNK) -> bytes | None:
    out = bytearray(size)
    return bytes(out) if store.read(key, out) else None


@pytest.mark.parametrize("engine", engines())
def test_round_trip_and_restart(tmp_path: Path, make_store: StoreFactory, engine: str) -> None:
    store = make_store(tmp_path, 10 * file_size_for(CHUNK), engine=engine)
    assert store.engine is not None and store.engine.name.startswith(engine)
    keys = [f"key-{i}".encode() for i in range(5)]
    for key in keys:
        assert store.write(key, payload_for(key, CHUNK)).written == 1
    assert store.write(keys[0], payload_for(keys[0], CHUNK)).present == 1  # deduped
    for key in keys:
        assert store.lookup(key)
        assert _read_back(store, key) == payload_for(key, CHUNK)
    assert not store.lookup(b"never-written") and _read_back(store, b"never-written") is None
    # Odd sizes are padded on disk and come back exact.
    assert store.write(b"odd", payload_for(b"odd", 1000)).written == 1
    assert _read_back(store, b"odd", 1000) == payload_for(b"odd", 1000)
    store.close()

    again = make_store(tmp_path, 10 * file_size_for(CHUNK), engine=engine)
    stats = again.stats()
    assert stats["rebuild_chunks"] == 6 and stats["chunks"] == 6
    assert stats["usage_bytes"] == disk_usage(tmp_path) == 5 * file_size_for(CHUNK) + 2 * 4096
    for key in keys:
        assert again.lookup(key) and _read_back(again, key) == payload_for(key, CHUNK)


def _random_workload(store: NvmeChunkStore, watch: Callable[[], int]) -> tuple[int, dict]:
    """Concurrent random writes/touches; returns the peak of ``watch()`` seen meanwhile."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], watch())

    sampler = threading.Thread(target=sample)
    sampler.start()
    rng = random.Random(11)
    size_of = {f"k{i}".encode(): rng.choice((CHUNK, 3 * CHUNK, 5000)) for i in range(150)}
    try:
        for _round in range(40):
            futures = []
            for _batch in range(3):  # several jobs in flight at once
                keys = [f"k{rng.randrange(150)}".encode() for _ in range(rng.randrange(1, 8))]
                items = [(k, memoryview(payload_for(k, size_of[k]))) for k in keys]
                futures.append(store.submit_writes(items))
            for key in (f"k{rng.randrange(150)}".encode() for _ in range(5)):
                if store.lookup(key):
                    store.touch([key])
            for future in futures:
                future.result()
    finally:
        stop.set()
        sampler.join()
    store.drain()
    return peak[0], size_of


@pytest.mark.parametrize("engine", engines())
def test_cap_is_never_exceeded_under_a_random_workload(
    tmp_path: Path, make_store: StoreFactory, engine: str
) -> None:
    cap = 40 * file_size_for(CHUNK)
    store = make_store(tmp_path, cap, engine=engine, io_threads=4)
    peak, size_of = _random_workload(store, lambda: store.index.used_bytes)
    stats = store.stats()
    assert peak <= cap, (peak, cap)
    assert stats["usage_bytes"] == disk_usage(tmp_path) <= cap
    assert stats["evictions"] > 0 and stats["writes"] > 40
    survivors = [key for key in size_of if store.lookup(key)]
    assert len(survivors) == stats["chunks"] == len(chunk_files(tmp_path))
    for key in survivors:  # whatever survived reads back as itself
        assert _read_back(store, key, size_of[key]) == payload_for(key, size_of[key])


@pytest.mark.parametrize("engine", engines())
def test_cap_holds_on_a_real_filesystem_at_every_instant(
    mount_tmpfs: Callable[[str], Path], make_store: StoreFactory, engine: str
) -> None:
    """statvfs of a filesystem only the tier writes to: an atomic count of bytes on disk."""
    root = mount_tmpfs("64M")
    cap = 40 * file_size_for(CHUNK)
    store = make_store(root, cap, engine=engine, io_threads=4)
    baseline = fs_used_bytes(root)  # the lock file and folders
    peak, _sizes = _random_workload(store, lambda: fs_used_bytes(root) - baseline)
    assert peak <= cap, (peak, cap)
    assert store.stats()["evictions"] > 0


def test_eviction_is_lru_and_recency_survives_a_restart(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    cap = 3 * file_size_for(CHUNK)
    store = make_store(tmp_path, cap)
    for key in (b"A", b"B", b"C"):
        store.write(key, payload_for(key, CHUNK))
        time.sleep(0.02)  # distinct file mtimes (the filesystem clock is coarse)
    assert _read_back(store, b"A") == payload_for(b"A", CHUNK)  # A is now the newest
    time.sleep(0.02)
    store.write(b"D", payload_for(b"D", CHUNK))
    assert [store.lookup(k) for k in (b"A", b"B", b"C", b"D")] == [True, False, True, True]
    assert not _path(store, b"B").exists()
    assert store.stats()["evictions"] == 1
    store.close()

    # After a restart the order comes from mtimes: C is the oldest, then A, then D.
    again = make_store(tmp_path, cap)
    again.write(b"E", payload_for(b"E", CHUNK))
    assert [again.lookup(k) for k in (b"A", b"C", b"D", b"E")] == [True, False, True, True]


def test_restart_with_a_smaller_cap_evicts_down_to_it(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    store = make_store(tmp_path, 10 * file_size_for(CHUNK))
    for i in range(8):
        store.write(b"%d" % i, payload_for(b"%d" % i, CHUNK))
        time.sleep(0.01)
    store.close()
    smaller = make_store(tmp_path, 3 * file_size_for(CHUNK))
    assert smaller.stats()["usage_bytes"] == disk_usage(tmp_path) == 3 * file_size_for(CHUNK)
    assert [smaller.lookup(b"%d" % i) for i in range(8)] == [False] * 5 + [True] * 3


def test_too_large_chunks_are_rejected(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path, 2 * file_size_for(CHUNK))
    report = store.write(b"big", bytes(3 * CHUNK))
    assert report.rejected == 1 and not report.ok
    assert store.stats()["stores_rejected"] == 1 and disk_usage(tmp_path) == 0


def _flip_payload(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(HEADER_BLOCK + 100)
        byte = f.read(1)
        f.seek(HEADER_BLOCK + 100)
        f.write(bytes([byte[0] ^ 0x10]))


def _flip_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff")


def _truncate(path: Path) -> None:
    os.truncate(path, HEADER_BLOCK + CHUNK // 2)


def _foreign_version(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", 99))


CORRUPTIONS = {
    "checksum": _flip_payload,
    "bad_header": _flip_header,
    "truncated": _truncate,
    "foreign_version": _foreign_version,
}


@pytest.mark.parametrize("kind", [*CORRUPTIONS, "key_mismatch"])
@pytest.mark.parametrize("engine", engines())
def test_a_corrupt_chunk_is_a_miss_removed_and_counted(
    tmp_path: Path, make_store: StoreFactory, kind: str, engine: str
) -> None:
    store = make_store(tmp_path, 10 * file_size_for(CHUNK), engine=engine)
    for key in (b"victim", b"other"):
        store.write(key, payload_for(key, CHUNK))
    victim = _path(store, b"victim")
    if kind == "key_mismatch":  # another chunk's file under this key's name
        shutil.copyfile(_path(store, b"other"), victim)
    else:
        CORRUPTIONS[kind](victim)
    assert store.lookup(b"victim")  # the index cannot know yet
    assert _read_back(store, b"victim") is None
    assert not victim.exists() and not store.lookup(b"victim")
    stats = store.stats()
    assert stats[f"corrupt_{kind}"] == 1 and stats["corrupt_dropped"] == 1
    assert stats["faults"] == 0 and stats["write_disabled"] == 0
    assert stats["usage_bytes"] == disk_usage(tmp_path)
    assert _read_back(store, b"other") == payload_for(b"other", CHUNK)


def test_a_rewrite_waiting_on_a_stuck_unlink_is_rejected_not_hung(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt chunk's file is being unlinked (held here) when the same key is stored again:
    the new file must not be renamed into place before that unlink (it would remove it), and
    the write waits only CLAIM_WAIT_S for it, then counts as rejected instead of holding an
    I/O thread. Once the unlink is done, the key is written and read back."""
    monkeypatch.setattr(nvme_store, "CLAIM_WAIT_S", 0.3)
    release = threading.Event()
    real_unlink_each = chunk_space.unlink_each

    def held_unlink_each(paths: list[str]) -> list[OSError | None]:
        assert release.wait(30), "the test never released the unlink"
        return real_unlink_each(paths)

    store = make_store(tmp_path, 10 * file_size_for(CHUNK), io_threads=2)
    key = b"rewritten"
    store.write(key, payload_for(key, CHUNK))
    _flip_payload(_path(store, key))
    monkeypatch.setattr(chunk_space, "unlink_each", held_unlink_each)
    read = store.submit_reads([(key, memoryview(bytearray(CHUNK)))])
    deadline = time.monotonic() + 30
    while store.lookup(key) and time.monotonic() < deadline:  # the drop has begun
        time.sleep(0.01)
    started = time.monotonic()
    report = store.write(key, payload_for(key, CHUNK))
    assert report.rejected == 1 and not report.ok
    assert time.monotonic() - started < 10
    release.set()
    assert read.result(30) == [False]
    assert store.write(key, payload_for(key, CHUNK)).written == 1
    assert _read_back(store, key) == payload_for(key, CHUNK)
    assert store.stats()["usage_bytes"] == disk_usage(tmp_path)


def test_corruption_while_down_is_caught_at_restart(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    store = make_store(tmp_path, 10 * file_size_for(CHUNK))
    for key in (b"flipped", b"cut", b"fine"):
        store.write(key, payload_for(key, CHUNK))
    flipped, cut = _path(store, b"flipped"), _path(store, b"cut")
    store.close()
    _flip_payload(flipped)
    os.truncate(cut, HEADER_BLOCK + 1000)  # not a whole block: dropped by the rebuild itself
    again = make_store(tmp_path, 10 * file_size_for(CHUNK))
    assert again.stats()["corrupt_truncated"] == 1 and not cut.exists()
    assert not again.lookup(b"cut")
    assert _read_back(again, b"flipped") is None and again.stats()["corrupt_checksum"] == 1
    assert _read_back(again, b"fine") == payload_for(b"fine", CHUNK)


def test_auto_capacity_rule() -> None:
    tb = 1000 * GIB
    # A dedicated 1000 GiB disk, empty: all but 10 %.
    assert auto_capacity(tb, tb, 0) == 900 * GIB
    # Restart with 300 GiB of our own chunks and 700 GiB free: the same cap as before.
    assert auto_capacity(700 * GIB, tb, 300 * GIB) == 900 * GIB
    # A small shared filesystem keeps at least 4 GiB free.
    assert auto_capacity(10 * GIB, 20 * GIB, 0) == 6 * GIB
    assert auto_capacity(3 * GIB, 20 * GIB, 0) == 0
    assert auto_capacity(10 * GIB + 123, 20 * GIB, 0) % 4096 == 0


def test_auto_capacity_of_a_real_filesystem(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert 0 <= auto_capacity_bytes(tmp_path, 0) <= st.f_bavail * st.f_frsize


def test_auto_capacity_leaves_a_small_filesystem_alone(
    mount_tmpfs: Callable[[str], Path],
) -> None:
    assert (
        auto_capacity_bytes(mount_tmpfs("2M"), 0) == 0
    )  # 2 MiB is all reserve (>= 4 GiB kept free)


def test_auto_sized_store_starts(tmp_path: Path, make_store: StoreFactory) -> None:
    store = make_store(tmp_path, None)
    st = os.statvfs(tmp_path)
    assert store.ready and 0 <= store.stats()["capacity_bytes"] <= st.f_bavail * st.f_frsize
