"""Eviction order and byte accounting of the NVMe tier's in-memory index."""

from __future__ import annotations

import random

from atom_tier.tiers.index import ChunkIndex, Victim


def _fill(index: ChunkIndex, *digests: str, size: int = 10) -> None:
    for digest in digests:
        assert index.reserve(digest, size) == []
        assert index.claim(digest)
        index.publish(digest)


def test_evicts_least_recently_used_first() -> None:
    index = ChunkIndex(30)
    _fill(index, "a", "b", "c")
    index.touch(["a"])  # b is now the oldest
    victims = index.reserve("d", 10)
    assert victims == [Victim("b", 10)]
    assert index.lru_order() == ["c", "a", "d"]
    # A read (pin) also counts as use.
    assert index.pin("c")
    index.unpin("c")
    index.publish("d")
    assert index.reserve("e", 10) == [Victim("a", 10)]


def test_eviction_frees_enough_for_a_larger_chunk() -> None:
    index = ChunkIndex(40)
    _fill(index, "a", "b", "c", "d")
    victims = index.reserve("big", 25)
    assert [v.digest for v in victims or []] == ["a", "b", "c"]


def test_pinned_and_unpublished_chunks_are_never_evicted() -> None:
    index = ChunkIndex(30)
    _fill(index, "a", "b")
    assert index.reserve("writing", 10) == []  # reserved, not published
    assert index.pin("a") and index.pin("b")
    assert index.reserve("new", 10) is None  # nothing evictable: refused, nothing evicted
    assert index.lru_order() == ["writing", "a", "b"]
    index.unpin("a")
    assert index.reserve("new", 10) == [Victim("a", 10)]


def test_claims_wait_for_pending_deletions_so_disk_bytes_stay_under_the_cap() -> None:
    index = ChunkIndex(20)
    _fill(index, "a", "b")
    victims = index.reserve("c", 10)
    assert victims == [Victim("a", 10)]
    # "a" left the index but its file is still on disk: "c" may not be written yet.
    assert index.live_bytes == 20 and index.used_bytes == 20
    assert not index.claim("c")
    assert index.pending_deletes == 1
    index.deleted(victims[0])
    assert index.pending_deletes == 0 and index.used_bytes == 10
    assert index.claim("c") and index.used_bytes == 20
    index.publish("c")
    assert index.published_stats() == (2, 20)


def test_a_chunk_stored_again_waits_for_the_unlink_of_its_old_file() -> None:
    index = ChunkIndex(100)
    _fill(index, "a")
    old = index.remove("a")
    assert old is not None
    assert index.reserve("a", 10) == []  # stored again at once
    assert not index.claim("a")  # the old file's unlink would remove the new one
    index.deleted(old)
    assert index.claim("a")


def test_an_undeletable_file_stays_counted() -> None:
    index = ChunkIndex(20)
    _fill(index, "a", "b")
    victims = index.reserve("c", 10) or []
    index.delete_failed(victims[0])
    assert index.pending_deletes == 0 and index.used_bytes == 20
    assert not index.claim("c")  # the caller gives up: nothing will free the space
    index.abort("c")
    assert index.live_bytes == 10


def test_refuses_known_and_oversized_chunks_and_aborts_cleanly() -> None:
    index = ChunkIndex(100)
    _fill(index, "a")
    assert index.reserve("a", 10) is None
    assert index.reserve("huge", 101) is None
    assert index.reserve("x", 50) == []
    assert index.knows("x") and not index.is_published("x")
    assert index.claim("x") and index.used_bytes == 60
    index.abort("x")
    assert not index.knows("x") and index.used_bytes == 10 and index.live_bytes == 10
    assert not index.pin("missing")


def test_remove_and_capacity_change() -> None:
    index = ChunkIndex(50)
    _fill(index, "a", "b", "c", "d", "e")
    removed = index.remove("c")
    assert removed == Victim("c", 10)
    assert index.remove("c") is None
    index.deleted(removed)
    victims = index.set_capacity(25)
    assert [v.digest for v in victims] == ["a", "b"]
    assert index.capacity_bytes == 25


def test_used_bytes_never_exceed_the_cap_under_random_operations() -> None:
    rng = random.Random(7)
    index = ChunkIndex(1000)
    pending: list[Victim] = []
    writing: list[str] = []
    pinned: list[str] = []
    for step in range(20000):
        op = rng.random()
        if op < 0.35:
            digest = f"k{rng.randrange(300)}"
            victims = index.reserve(digest, rng.randrange(1, 200))
            if victims is not None:
                pending.extend(victims)
                writing.append(digest)
        elif op < 0.55 and writing:
            digest = writing[rng.randrange(len(writing))]
            if index.claim(digest):
                writing.remove(digest)
                if rng.random() < 0.9:
                    index.publish(digest)
                else:
                    index.abort(digest)
        elif op < 0.7 and pending:
            index.deleted(pending.pop(rng.randrange(len(pending))))
        elif op < 0.85:
            digest = f"k{rng.randrange(300)}"
            if index.pin(digest):
                pinned.append(digest)
        elif pinned:
            index.unpin(pinned.pop(rng.randrange(len(pinned))))
        assert index.used_bytes <= 1000, step
        assert index.live_bytes <= 1000, step
