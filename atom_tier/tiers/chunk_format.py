"""On-disk format of one NVMe-tier chunk: a fixed 4 KiB header block, then the payload.

```
offset 0      header block (HEADER_BLOCK bytes, zero padded)
                magic "ATOMTKV\\0" | version u16 | checksum kind u16 | payload_len u64
                | payload checksum u64 | namespace_len u16 | key_len u16 | namespace | key
                | header_crc32 u32
offset 4096   payload (payload_len bytes), zero padded to a multiple of ALIGNMENT
```

The header block is exactly one O_DIRECT unit so the payload starts aligned: it can be read
straight into (and written straight from) a page-aligned DRAM-tier slot. The payload checksum
is verified on every read, so nothing written by a killed process, a crashed machine, another
format version or another model is ever returned: it decodes as a :class:`ChunkFormatError`,
which the store turns into a miss. This module does no I/O.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Protocol

from atom_tier.sizing import NVME_ALIGNMENT

_XXH3_64: Callable[..., int] | None
try:
    import xxhash

    _XXH3_64 = xxhash.xxh3_64_intdigest
except ImportError:  # xxhash is a dependency; without it CRC-32 keeps the tier working
    _XXH3_64 = None

MAGIC = b"ATOMTKV\x00"
FORMAT_VERSION = 1
# O_DIRECT needs file offsets, lengths and memory aligned to the logical block size; 4 KiB
# covers every NVMe/SATA/virtio disk and equals the page size DRAM-tier slots are aligned to.
ALIGNMENT = NVME_ALIGNMENT  # O_DIRECT alignment; the automatic cap counts in it too
HEADER_BLOCK = ALIGNMENT
CHUNK_SUFFIX = ".kvc"
TEMP_SUFFIX = ".tmp"

_FIXED = struct.Struct("<8sHHQQHH")
_CRC = struct.Struct("<I")
MAX_NAME_BYTES = HEADER_BLOCK - _FIXED.size - _CRC.size


class ChecksumKind(IntEnum):
    """Payload checksum of a chunk (the header says which)."""

    CRC32 = 0  # zlib, ~2.5-5 GB/s per core here: slower than one NVMe drive
    XXH3_64 = 1  # xxHash XXH3, ~45 GB/s per core here: the default


def _crc32(payload: memoryview | bytes | bytearray) -> int:
    return zlib.crc32(payload) & 0xFFFFFFFF


_CHECKSUMS: dict[ChecksumKind, Callable[[memoryview | bytes | bytearray], int]] = {
    ChecksumKind.CRC32: _crc32
}
if _XXH3_64 is not None:
    _CHECKSUMS[ChecksumKind.XXH3_64] = _XXH3_64
DEFAULT_CHECKSUM = ChecksumKind.XXH3_64 if _XXH3_64 is not None else ChecksumKind.CRC32


class CorruptionKind(str, Enum):
    """Why a stored chunk was refused; each kind has its own counter in the tier's stats."""

    TRUNCATED = "truncated"
    BAD_HEADER = "bad_header"
    FOREIGN_VERSION = "foreign_version"
    KEY_MISMATCH = "key_mismatch"
    LENGTH_MISMATCH = "length_mismatch"
    CHECKSUM = "checksum"


class ChunkFormatError(ValueError):
    """A chunk file that must not be served; ``kind`` says why."""

    def __init__(self, kind: CorruptionKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class ChunkHeader:
    """Decoded header of a chunk file."""

    version: int
    namespace: bytes
    key: bytes
    payload_len: int
    checksum: int
    checksum_kind: int = DEFAULT_CHECKSUM


def align_up(size: int, alignment: int = ALIGNMENT) -> int:
    return (size + alignment - 1) // alignment * alignment


def file_size_for(payload_len: int) -> int:
    """Bytes a chunk occupies on disk (what the capacity cap accounts)."""
    return HEADER_BLOCK + align_up(payload_len)


def payload_checksum(
    payload: memoryview | bytes | bytearray, kind: ChecksumKind = DEFAULT_CHECKSUM
) -> int:
    # Every payload byte is hashed on write and again on every read, so the hash must be
    # much faster than the disk: XXH3 (64-bit) when xxhash is installed, CRC-32 otherwise.
    return _CHECKSUMS[kind](payload)


def encode_header(
    namespace: bytes,
    key: bytes,
    payload_len: int,
    checksum: int,
    checksum_kind: ChecksumKind = DEFAULT_CHECKSUM,
) -> bytes:
    """The full HEADER_BLOCK-sized header block for a chunk."""
    if len(namespace) + len(key) > MAX_NAME_BYTES:
        raise ValueError(
            f"namespace+key of {len(namespace) + len(key)} bytes exceed {MAX_NAME_BYTES}"
        )
    body = (
        _FIXED.pack(
            MAGIC, FORMAT_VERSION, checksum_kind, payload_len, checksum, len(namespace), len(key)
        )
        + namespace
        + key
    )
    body += _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)
    return body + bytes(HEADER_BLOCK - len(body))


def decode_header(block: bytes | bytearray | memoryview) -> ChunkHeader:
    """Parse and self-check a header block; raises ChunkFormatError."""
    if len(block) < _FIXED.size + _CRC.size:
        raise ChunkFormatError(CorruptionKind.TRUNCATED, f"header of {len(block)} bytes")
    magic, version, kind, payload_len, checksum, ns_len, key_len = _FIXED.unpack_from(block, 0)
    if magic != MAGIC:
        raise ChunkFormatError(CorruptionKind.BAD_HEADER, "bad magic")
    if version != FORMAT_VERSION:
        # Checked before the header CRC: another version may lay its header out differently.
        raise ChunkFormatError(
            CorruptionKind.FOREIGN_VERSION, f"format version {version}, expected {FORMAT_VERSION}"
        )
    end = _FIXED.size + ns_len + key_len
    if end + _CRC.size > len(block):
        raise ChunkFormatError(CorruptionKind.BAD_HEADER, "name lengths exceed the header")
    (stored_crc,) = _CRC.unpack_from(block, end)
    if zlib.crc32(block[:end]) & 0xFFFFFFFF != stored_crc:
        raise ChunkFormatError(CorruptionKind.BAD_HEADER, "header checksum mismatch")
    namespace = bytes(block[_FIXED.size : _FIXED.size + ns_len])
    key = bytes(block[_FIXED.size + ns_len : end])
    return ChunkHeader(version, namespace, key, payload_len, checksum, kind)


def check_header(
    header_block: bytes | bytearray | memoryview, *, namespace: bytes, key: bytes, payload_len: int
) -> ChunkHeader:
    """Decode a chunk's header and check it against what was asked for (before any payload
    is read past it); raises ChunkFormatError."""
    header = decode_header(header_block)
    if header.namespace != namespace or header.key != key:
        raise ChunkFormatError(CorruptionKind.KEY_MISMATCH, "chunk holds another key")
    if header.payload_len != payload_len:
        raise ChunkFormatError(
            CorruptionKind.LENGTH_MISMATCH,
            f"payload of {header.payload_len} bytes, expected {payload_len}",
        )
    if header.checksum_kind not in _CHECKSUMS:
        raise ChunkFormatError(
            CorruptionKind.FOREIGN_VERSION, f"checksum kind {header.checksum_kind} unavailable"
        )
    return header


def check_payload(header: ChunkHeader, payload_read: int, checksum: int | None) -> None:
    """Check what the payload read delivered against its (checked) header: ``payload_read``
    bytes arrived, whose checksum is ``checksum`` (None when not computed: a short read is
    refused before its checksum matters); raises ChunkFormatError."""
    if payload_read < header.payload_len:
        raise ChunkFormatError(
            CorruptionKind.TRUNCATED, f"{payload_read} of {header.payload_len} payload bytes"
        )
    if checksum != header.checksum:
        raise ChunkFormatError(CorruptionKind.CHECKSUM, "payload checksum mismatch")


def verify_chunk(
    header_block: bytes | bytearray | memoryview,
    payload: memoryview,
    payload_read: int,
    *,
    namespace: bytes,
    key: bytes,
) -> ChunkHeader:
    """Check a chunk read from disk against what was asked for; raises ChunkFormatError.

    ``payload`` is the caller's buffer (its length is the expected payload length) and
    ``payload_read`` how many payload bytes the file actually delivered.
    """
    header = check_header(header_block, namespace=namespace, key=key, payload_len=len(payload))
    checksum = None
    if payload_read >= header.payload_len:
        checksum = payload_checksum(payload, ChecksumKind(header.checksum_kind))
    check_payload(header, payload_read, checksum)
    return header


class PayloadHasher(Protocol):
    """A payload checksum computed piece by piece (same value as ``payload_checksum``)."""

    def update(self, data: memoryview | bytes | bytearray, /) -> object: ...

    def intdigest(self) -> int: ...


class _Crc32Hasher:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: memoryview | bytes | bytearray, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def intdigest(self) -> int:
        return self._value & 0xFFFFFFFF


_HASHERS: dict[ChecksumKind, Callable[[], PayloadHasher]] = {ChecksumKind.CRC32: _Crc32Hasher}
if _XXH3_64 is not None:
    _HASHERS[ChecksumKind.XXH3_64] = xxhash.xxh3_64


def payload_hasher(kind: ChecksumKind = DEFAULT_CHECKSUM) -> PayloadHasher:
    """A hasher for a payload that arrives in pieces. XXH3's ``update`` releases the GIL for
    pieces of 64 KiB and more (xxhash 4's ``_GIL_MINSIZE``), so it runs beside I/O threads."""
    return _HASHERS[kind]()


def chunk_digest(namespace: bytes, key: bytes) -> str:
    """File name stem of a chunk: fixed length whatever the key, and namespace-specific."""
    return hashlib.blake2b(namespace + b"\x00" + key, digest_size=16).hexdigest()


def chunk_relpath(digest: str) -> str:
    """Two-level layout (256 folders) keeps directories small at millions of chunks."""
    return f"{digest[:2]}/{digest}{CHUNK_SUFFIX}"


def is_chunk_name(name: str) -> bool:
    stem = name[: -len(CHUNK_SUFFIX)]
    return (
        name.endswith(CHUNK_SUFFIX)
        and len(stem) == 32
        and all(c in "0123456789abcdef" for c in stem)
    )
