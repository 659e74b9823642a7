"""The shared tier's value format: the NVMe chunk format plus an optional MAC (pure)."""

from __future__ import annotations

import os

import pytest

from atom_tier.tiers.chunk_format import HEADER_BLOCK, ChunkFormatError, CorruptionKind
from atom_tier.tiers.shared_value import (
    MAC_BYTES,
    Signer,
    UnsignedValueError,
    open_into,
    seal_parts,
    verify_parts,
)


def seal(namespace: bytes, key: bytes, payload: memoryview, signer: Signer | None) -> bytes:
    """The value as the server holds it: its parts joined."""
    return b"".join(seal_parts(namespace, key, payload, signer))


NS, KEY = b"ns-1", b"\x01" * 16


def _payload(size: int = 8192) -> memoryview:
    return memoryview(bytearray(os.urandom(size)))


@pytest.mark.parametrize("signed", [False, True])
def test_round_trip(signed: bool) -> None:
    signer = Signer.from_secret("correct horse") if signed else None
    payload = _payload()
    value = seal(NS, KEY, payload, signer)
    assert len(value) == HEADER_BLOCK + payload.nbytes + (MAC_BYTES if signed else 0)
    out = bytearray(payload.nbytes)
    open_into(bytes(value), NS, KEY, memoryview(out), signer)
    assert out == payload


@pytest.mark.parametrize(
    ("mutate", "kind"),
    [
        (
            lambda v: v.__setitem__(HEADER_BLOCK + 5, v[HEADER_BLOCK + 5] ^ 1),
            CorruptionKind.CHECKSUM,
        ),
        (lambda v: v.__setitem__(3, v[3] ^ 1), CorruptionKind.BAD_HEADER),
        (lambda v: v.__delitem__(slice(len(v) - 100, len(v))), CorruptionKind.LENGTH_MISMATCH),
        (lambda v: v.__delitem__(slice(100, len(v))), CorruptionKind.TRUNCATED),
    ],
)
def test_damaged_values_are_refused_and_leave_the_buffer_alone(mutate, kind) -> None:  # type: ignore[no-untyped-def]
    value = bytearray(seal(NS, KEY, _payload(), None))
    mutate(value)
    out = bytearray(b"\xaa" * 8192)
    with pytest.raises(ChunkFormatError) as error:
        open_into(bytes(value), NS, KEY, memoryview(out), None)
    assert error.value.kind in (kind, CorruptionKind.TRUNCATED, CorruptionKind.LENGTH_MISMATCH)
    assert out == b"\xaa" * 8192


def test_value_of_another_namespace_or_key_is_refused() -> None:
    value = bytes(seal(NS, KEY, _payload(), None))
    out = memoryview(bytearray(8192))
    for namespace, key in ((b"ns-2", KEY), (NS, b"\x02" * 16)):
        with pytest.raises(ChunkFormatError) as error:
            open_into(value, namespace, key, out, None)
        assert error.value.kind is CorruptionKind.KEY_MISMATCH


def test_signing_server_refuses_unsigned_and_mis_signed_values() -> None:
    signer = Signer.from_secret("s1")
    out = memoryview(bytearray(8192))
    unsigned = bytes(seal(NS, KEY, _payload(), None))
    other = bytes(seal(NS, KEY, _payload(), Signer.from_secret("s2")))
    for value in (unsigned, other, unsigned + b"\0" * MAC_BYTES):
        with pytest.raises(UnsignedValueError):
            open_into(value, NS, KEY, out, signer)


def test_a_forged_payload_with_a_fresh_checksum_is_refused_when_signed() -> None:
    """An attacker who can write to the server can compute checksums, not MACs."""
    signer = Signer.from_secret("s1")
    forged = bytes(seal(NS, KEY, _payload(), None)) + b"\0" * MAC_BYTES
    with pytest.raises(UnsignedValueError):
        open_into(bytes(forged), NS, KEY, memoryview(bytearray(8192)), signer)


def test_signer_never_shows_its_secret() -> None:
    signer = Signer.from_secret("hunter2-very-secret")
    assert "hunter2" not in repr(signer) and signer.key_id in repr(signer)
    assert Signer.from_secret("hunter2-very-secret").key_id == signer.key_id
    assert Signer.from_secret("other").key_id != signer.key_id
    with pytest.raises(ValueError):
        Signer.from_secret("  \n")


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("damage", [None, "payload", "header", "mac", "key"])
def test_parts_verify_as_the_joined_value_does(signed: bool, damage: str | None) -> None:
    """verify_parts (a value read in its parts, payload already in the buffer) refuses what
    open_into refuses, with the same kind, and accepts what it accepts."""
    signer = Signer.from_secret("s1") if signed else None
    payload = _payload()
    parts = [bytearray(p) for p in seal_parts(NS, KEY, payload, signer)]
    assert len(parts) == (3 if signed else 2) and bytes(parts[1]) == payload
    if damage == "payload":
        parts[1][7] ^= 1
    elif damage == "header":
        parts[0][20] ^= 1
    elif damage == "mac" and signed:
        parts[2][0] ^= 1
    key = b"\x02" * 16 if damage == "key" else KEY
    mac = parts[2] if signed else b""
    joined = b"".join(parts)
    outcomes = []
    for check in (
        lambda: verify_parts(parts[0], memoryview(parts[1]), mac, NS, key, signer),
        lambda: open_into(joined, NS, key, memoryview(bytearray(payload.nbytes)), signer),
    ):
        try:
            check()
            outcomes.append("ok")
        except ChunkFormatError as error:
            outcomes.append(f"{type(error).__name__} {error.kind}")
    assert outcomes[0] == outcomes[1]
    refused = damage in ("payload", "header", "key") or (damage == "mac" and signed)
    assert (outcomes[0] != "ok") is refused
