"""Header encode/decode and chunk verification (pure functions, no I/O)."""

from __future__ import annotations

import os
import struct

import pytest

from atom_tier.tiers.chunk_format import (
    DEFAULT_CHECKSUM,
    FORMAT_VERSION,
    HEADER_BLOCK,
    MAX_NAME_BYTES,
    ChecksumKind,
    ChunkFormatError,
    CorruptionKind,
    chunk_digest,
    chunk_relpath,
    decode_header,
    encode_header,
    file_size_for,
    is_chunk_name,
    payload_checksum,
    verify_chunk,
)

NS = b"model-a"


def _chunk(key: bytes, payload: bytes) -> bytes:
    return encode_header(NS, key, len(payload), payload_checksum(payload))


def test_header_round_trip() -> None:
    payload = os.urandom(10_000)
    block = _chunk(b"\x01key", payload)
    assert len(block) == HEADER_BLOCK
    header = decode_header(block)
    assert header.version == FORMAT_VERSION
    assert (header.namespace, header.key) == (NS, b"\x01key")
    assert header.payload_len == len(payload)
    assert header.checksum == payload_checksum(payload)
    assert header.checksum_kind == DEFAULT_CHECKSUM
    checked = verify_chunk(block, memoryview(payload), len(payload), namespace=NS, key=b"\x01key")
    assert checked == header


def _kind(block: bytes, payload: bytes, got: int | None = None, **names: bytes) -> CorruptionKind:
    args = {"namespace": NS, "key": b"k"} | names
    with pytest.raises(ChunkFormatError) as info:
        verify_chunk(
            block,
            memoryview(payload),
            len(payload) if got is None else got,
            namespace=args["namespace"],
            key=args["key"],
        )
    return info.value.kind


def test_flipped_payload_byte_is_a_checksum_error() -> None:
    payload = bytearray(os.urandom(4096))
    block = _chunk(b"k", bytes(payload))
    payload[1234] ^= 0x40
    assert _kind(block, bytes(payload)) is CorruptionKind.CHECKSUM


def test_flipped_header_byte_is_a_bad_header() -> None:
    payload = os.urandom(100)
    block = bytearray(_chunk(b"k", payload))
    block[20] ^= 0x01  # inside the payload length field
    assert _kind(bytes(block), payload) is CorruptionKind.BAD_HEADER
    block = bytearray(_chunk(b"k", payload))
    block[0] ^= 0xFF
    assert _kind(bytes(block), payload) is CorruptionKind.BAD_HEADER


def test_other_format_version_is_foreign() -> None:
    payload = os.urandom(100)
    block = bytearray(_chunk(b"k", payload))
    struct.pack_into("<H", block, 8, FORMAT_VERSION + 1)
    assert _kind(bytes(block), payload) is CorruptionKind.FOREIGN_VERSION


def test_other_key_or_namespace_is_a_mismatch() -> None:
    payload = os.urandom(100)
    block = _chunk(b"k", payload)
    assert _kind(block, payload, key=b"other") is CorruptionKind.KEY_MISMATCH
    assert _kind(block, payload, namespace=b"model-b") is CorruptionKind.KEY_MISMATCH


def test_short_payload_is_truncated_and_wrong_size_is_length_mismatch() -> None:
    payload = os.urandom(8192)
    block = _chunk(b"k", payload)
    assert _kind(block, payload, got=5000) is CorruptionKind.TRUNCATED
    assert _kind(block, payload[:4096]) is CorruptionKind.LENGTH_MISMATCH
    assert _kind(block[:10], payload) is CorruptionKind.TRUNCATED
    assert _kind(bytes(HEADER_BLOCK), payload) is CorruptionKind.BAD_HEADER  # zero-filled


def test_both_checksum_kinds_verify_and_an_unknown_kind_is_foreign() -> None:
    payload = os.urandom(5000)
    for kind in ChecksumKind:
        block = encode_header(NS, b"k", len(payload), payload_checksum(payload, kind), kind)
        assert verify_chunk(block, memoryview(payload), 5000, namespace=NS, key=b"k")
        damaged = bytearray(payload)
        damaged[4999] ^= 1
        assert _kind(block, bytes(damaged)) is CorruptionKind.CHECKSUM
    block = encode_header(NS, b"k", len(payload), 0, 7)  # type: ignore[arg-type]
    assert _kind(block, payload) is CorruptionKind.FOREIGN_VERSION
    assert DEFAULT_CHECKSUM is ChecksumKind.XXH3_64  # xxhash is installed with atom-tier


def test_names_too_long_for_the_header_block_are_refused() -> None:
    with pytest.raises(ValueError, match="exceed"):
        encode_header(b"n", b"k" * MAX_NAME_BYTES, 1, 0)
    encode_header(b"", b"k" * MAX_NAME_BYTES, 1, 0)  # exactly fits


def test_digest_layout_and_sizes() -> None:
    digest = chunk_digest(NS, b"key")
    assert digest != chunk_digest(b"model-b", b"key")
    assert digest != chunk_digest(NS, b"key2")
    assert chunk_relpath(digest) == f"{digest[:2]}/{digest}.kvc"
    assert is_chunk_name(f"{digest}.kvc")
    assert not is_chunk_name(f"{digest}.kvc.123.0.tmp")
    assert not is_chunk_name("config.json")
    assert file_size_for(1) == 2 * HEADER_BLOCK
    assert file_size_for(4096) == 2 * HEADER_BLOCK
    assert file_size_for(4097) == 3 * HEADER_BLOCK
