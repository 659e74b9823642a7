"""Faults under a live NVMe tier: a really full disk, EIO (simulated), a removed directory,
a file deleted between lookup and load, a writer killed with SIGKILL, a shared directory.
None may raise to the caller, return wrong bytes, or push usage over the cap."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from atom_tier.tiers import chunk_space
from atom_tier.tiers import direct_engine as aio
from atom_tier.tiers.chunk_format import chunk_relpath, file_size_for
from atom_tier.tiers.nvme_store import NvmeChunkStore
from tests.tiers.conftest import StoreFactory, disk_usage, engines, payload_for

CHUNK = 256 * 1024


def _read_back(store: NvmeChunkStore, key: bytes) -> bytes | None:
    out = bytearray(CHUNK)
    return bytes(out) if store.read(key, out) else None


@pytest.mark.parametrize("engine", engines())
def test_a_full_disk_stops_writes_keeps_reads_and_recovers(
    mount_tmpfs: Callable[[str], Path], make_store: StoreFactory, engine: str
) -> None:
    root = mount_tmpfs("2M")
    filler = root / "someone-elses-file"
    filler.write_bytes(bytes(1024 * 1024))
    # The cap (64 MiB) is far above what the filesystem has left: the disk fills first.
    store = make_store(root / "tier", 64 * 2**20, engine=engine, fault_retry_s=0.3)
    written = []
    for i in range(8):
        key = b"%d" % i
        report = store.write(key, payload_for(key, CHUNK))
        if report.written:
            written.append(key)
    stats = store.stats()
    assert written and len(written) < 8
    assert stats["write_disabled"] == 1 and stats["fault_enospc"] >= 1
    assert stats["write_failures"] == 1 and stats["stores_skipped_disabled"] >= 1
    assert stats["usage_bytes"] == disk_usage(root / "tier")
    for key in written:  # what is on disk is still served
        assert _read_back(store, key) == payload_for(key, CHUNK)
    assert not list((root / "tier").glob("??/*.tmp"))  # the failed write left nothing

    filler.unlink()  # space comes back; after the retry wait a write is tried again
    time.sleep(0.4)
    assert store.write(b"later", payload_for(b"later", CHUNK)).written == 1
    assert store.stats()["write_disabled"] == 0
    assert _read_back(store, b"later") == payload_for(b"later", CHUNK)


def test_eio_on_write_stops_writes_simulated(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO cannot be produced on demand here (no device-mapper): the write call is faked."""
    store = make_store(tmp_path, 64 * 2**20, engine="direct")
    store.write(b"before", payload_for(b"before", CHUNK))

    def failing_write(fd: int, buffers: list[memoryview], offset: int = 0) -> int:
        raise OSError(errno.EIO, "Input/output error (injected)")

    monkeypatch.setattr(aio, "pwrite_all", failing_write)
    report = store.write(b"during", payload_for(b"during", CHUNK))
    assert report.failed == 1 and not report.ok
    assert store.write(b"next", payload_for(b"next", CHUNK)).skipped == 1
    stats = store.stats()
    assert stats["fault_eio"] == 1 and stats["write_disabled"] == 1
    assert not store.lookup(b"during") and not list(tmp_path.glob("??/*.tmp"))
    assert _read_back(store, b"before") == payload_for(b"before", CHUNK)
    assert stats["usage_bytes"] == disk_usage(tmp_path)


def test_eio_on_read_is_a_miss_simulated(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on read, faked at the read call (see above): a miss, the chunk dropped."""
    store = make_store(tmp_path, 64 * 2**20, engine="direct")
    store.write(b"k", payload_for(b"k", CHUNK))

    def failing_read(fd: int, buffers: list[memoryview], offset: int = 0) -> int:
        raise OSError(errno.EIO, "Input/output error (injected)")

    monkeypatch.setattr(aio, "pread_into", failing_read)
    assert _read_back(store, b"k") is None
    stats = store.stats()
    assert stats["fault_eio"] == 1 and stats["read_failures"] == 1
    assert not store.lookup(b"k")  # not offered again: no retry loop on a bad sector


def test_eio_through_caio_stops_writes_and_misses_reads_simulated(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffered engine: caio reports I/O errors as SystemError (faked here at the batch
    the engine hands its loop). Writes stop, reads miss, nothing half-written is left."""
    from atom_tier.tiers import aiofile_engine

    store = make_store(tmp_path, 64 * 2**20, engine="aiofile")
    store.write(b"before", payload_for(b"before", CHUNK))
    store.write(b"k", payload_for(b"k", CHUNK))

    async def failing_writes(self: object, files: list[object]) -> list[SystemError]:
        return [SystemError(errno.EIO, "Input/output error (injected)") for _ in files]

    async def failing_reads(self: object, files: list[object], sizes: list[int]) -> list[object]:
        return [SystemError("Input/output error") for _ in files]  # strerror only, as caio can

    monkeypatch.setattr(aiofile_engine.AiofileEngine, "_write_all", failing_writes)
    report = store.write(b"during", payload_for(b"during", CHUNK))
    assert report.failed == 1 and not report.ok
    assert store.stats()["fault_eio"] == 1 and store.stats()["write_disabled"] == 1
    assert not store.lookup(b"during") and not list(tmp_path.glob("??/*.tmp"))
    monkeypatch.setattr(aiofile_engine.AiofileEngine, "_read_all", failing_reads)
    assert _read_back(store, b"k") is None
    stats = store.stats()
    assert stats["fault_eio"] == 2 and stats["read_failures"] == 1 and not store.lookup(b"k")
    monkeypatch.undo()
    assert _read_back(store, b"before") == payload_for(b"before", CHUNK)
    assert store.stats()["usage_bytes"] == disk_usage(tmp_path)


def test_a_failing_unlink_and_an_unreadable_root_still_end_the_write_cleanly_simulated(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evicted chunk's unlink fails with EIO while stat of the tier directory fails with
    ESTALE (an NFS mount going bad; both faked, neither can be produced here). The write
    must end with a report, the undeletable file stays counted, nothing stays reserved."""
    store = make_store(tmp_path, 2 * file_size_for(CHUNK))
    for key in (b"a", b"b"):
        store.write(key, payload_for(key, CHUNK))
    real_is_dir = Path.is_dir

    def stale_is_dir(self: Path) -> bool:
        if self == store.root:
            raise OSError(errno.ESTALE, "Stale file handle (injected)")
        return real_is_dir(self)

    def failing_unlink_each(paths: list[str]) -> list[OSError | None]:
        return [OSError(errno.EIO, "Input/output error (injected)") for _ in paths]

    monkeypatch.setattr(Path, "is_dir", stale_is_dir)
    monkeypatch.setattr(chunk_space, "unlink_each", failing_unlink_each)
    report = store.write(b"c", payload_for(b"c", CHUNK))
    assert report.rejected == 1 and report.written == 0  # "a" could not make room
    stats = store.stats()
    assert stats["fault_eio"] == 1 and stats["usage_bytes"] == 2 * file_size_for(CHUNK)
    assert not store.index.knows(store.digest(b"c")) and store.index.pending_deletes == 0
    monkeypatch.undo()
    assert _read_back(store, b"b") == payload_for(b"b", CHUNK)


def test_an_aiofile_error_of_its_own_fails_one_chunk_not_the_group_simulated(
    tmp_path: Path, make_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiofile raises RuntimeError("Write operation returned 0") when the kernel writes
    nothing (faked for one file): that chunk fails, its neighbours are written."""
    from aiofile import AIOFile

    store = make_store(tmp_path, 64 * 2**20, engine="aiofile")
    real_write = AIOFile.write

    async def flaky_write(self: AIOFile, data: bytes | str, offset: int = 0) -> int:
        if payload_for(b"bad", CHUNK)[:64] in bytes(data[:8192]):
            raise RuntimeError("Write operation returned 0")
        return await real_write(self, data, offset)

    monkeypatch.setattr(AIOFile, "write", flaky_write)
    keys = [b"good1", b"bad", b"good2"]
    items = [(k, memoryview(payload_for(k, CHUNK))) for k in keys]
    report = store.submit_writes(items).result(30)
    assert report.written == 2 and report.failed == 1
    assert not list(tmp_path.glob("??/*.tmp")) and not store.lookup(b"bad")
    monkeypatch.undo()
    assert _read_back(store, b"good2") == payload_for(b"good2", CHUNK)
    assert store.stats()["usage_bytes"] == disk_usage(tmp_path)


@pytest.mark.parametrize("engine", engines())
def test_directory_removed_while_running(
    tmp_path: Path, make_store: StoreFactory, engine: str
) -> None:
    root = tmp_path / "tier"
    store = make_store(root, 64 * 2**20, engine=engine)
    for key in (b"a", b"b"):
        store.write(key, payload_for(key, CHUNK))
    shutil.rmtree(root)
    assert store.lookup(b"a")  # the index does not know yet
    report = store.write(b"c", payload_for(b"c", CHUNK))
    assert report.failed == 1
    assert store.write(b"d", payload_for(b"d", CHUNK)).skipped == 1
    stats = store.stats()
    assert stats["fault_path_removed"] == 1 and stats["write_disabled"] == 1
    assert _read_back(store, b"a") is None
    assert not store.lookup(b"a") and not store.lookup(b"c")
    assert store.stats()["usage_bytes"] == file_size_for(CHUNK)  # "b", until it is asked for
    assert _read_back(store, b"b") is None and store.stats()["usage_bytes"] == 0


@pytest.mark.parametrize("engine", engines())
def test_file_deleted_between_lookup_and_load_is_a_plain_miss(
    tmp_path: Path, make_store: StoreFactory, engine: str
) -> None:
    store = make_store(tmp_path, 64 * 2**20, engine=engine)
    store.write(b"k", payload_for(b"k", CHUNK))
    assert store.lookup(b"k")
    (tmp_path / chunk_relpath(store.digest(b"k"))).unlink()
    assert _read_back(store, b"k") is None
    stats = store.stats()
    assert stats["vanished"] == 1 and stats["faults"] == 0 and stats["write_disabled"] == 0
    assert not store.lookup(b"k") and stats["usage_bytes"] == 0
    assert store.write(b"k", payload_for(b"k", CHUNK)).written == 1  # and can be stored again


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from atom_tier.tiers.nvme_store import NvmeChunkStore
    from tests.tiers.conftest import payload_for

    store = NvmeChunkStore(Path(sys.argv[1]), int(sys.argv[2]), namespace=b"test-model")
    assert store.wait_ready(30)
    print("ready", flush=True)
    i, inflight = 0, []
    while True:  # until killed; a few jobs in flight at a time, as the scheduler does
        keys = [b"%d" % (i + j) for j in range(4)]
        items = [(k, memoryview(payload_for(k, 256 * 1024))) for k in keys]
        inflight.append(store.submit_writes(items))
        if len(inflight) > 2:
            inflight.pop(0).result()
        i += 4
    """
)


def _evicting(root: Path, cap: int) -> bool:
    return disk_usage(root) >= cap - 2 * file_size_for(CHUNK)


def test_sigkill_during_writes_then_restart(tmp_path: Path, make_store: StoreFactory) -> None:
    cap = 40 * file_size_for(CHUNK)
    repo = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), str(cap)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not _evicting(tmp_path, cap) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # fill, evict and write for a while longer
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    store = make_store(tmp_path, cap)
    stats = store.stats()
    assert stats["ready"] == 1 and stats["usage_bytes"] <= cap
    assert stats["usage_bytes"] == disk_usage(tmp_path)  # leftovers (temp files) are gone
    assert not list(tmp_path.glob("??/*.tmp"))
    # Filled to the cap, less the chunks evicted for writes the kill cut short.
    assert stats["rebuild_chunks"] >= 20 and stats["evictions"] == 0
    served = 0
    for i in range(100_000):
        key = b"%d" % i
        if store.lookup(key):
            got = _read_back(store, key)
            assert got is None or got == payload_for(key, CHUNK)  # never someone else's bytes
            served += got is not None
        if served == stats["chunks"]:
            break
    assert served == stats["chunks"]  # chunks published before the kill are whole


def test_a_second_store_on_the_same_directory_is_refused(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    first = make_store(tmp_path, 64 * 2**20)
    second = make_store(tmp_path, 64 * 2**20)
    assert first.ready and not second.ready
    assert "another process uses" in second.unavailable_reason
    assert not second.lookup(b"k")
    assert second.write(b"k", payload_for(b"k", CHUNK)).skipped == 1
    assert first.write(b"k", payload_for(b"k", CHUNK)).written == 1


def test_an_unusable_directory_leaves_the_tier_off_not_the_caller(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = make_store(blocker / "tier", 64 * 2**20)
    assert not store.ready and store.unavailable_reason
    assert store.write(b"k", payload_for(b"k", CHUNK)).skipped == 1
    assert _read_back(store, b"k") is None
    assert os.path.isfile(blocker)
