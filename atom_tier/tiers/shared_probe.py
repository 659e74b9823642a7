"""What ``atom-tier doctor`` learns from the shared tier's server: reachable, authenticated,
version, memory policy, and the round trip and throughput of one chunk-sized value.

It writes one value under ``<prefix>:doctor:<random>`` and deletes it; nothing else is touched.
"""

from __future__ import annotations

import os
import secrets
import statistics
import time
from dataclasses import dataclass

from atom_tier.tiers.shared_client import ServerFacts, SharedClient, SharedUnavailable
from atom_tier.tiers.shared_url import SharedUrlError, parse_shared_url

# A DRAM-tier chunk of 256 tokens is 2-16 MiB on the MI300X recipes' models; doctor times one
# value of this size when it has no model to size a chunk from.
PROBE_VALUE_BYTES = 2 << 20
ROUND_TRIPS = 20


@dataclass(frozen=True)
class SharedProbe:
    """The outcome of probing; ``error`` set when the server could not be used."""

    display: str
    error: str | None = None
    bad_url: bool = False
    auth_failed: bool = False
    facts: ServerFacts | None = None
    rtt_ms: float | None = None  # median PING round trip
    value_bytes: int = 0
    set_mib_s: float | None = None
    get_mib_s: float | None = None


def probe_shared_tier(
    url: str,
    variable: str,
    prefix: str,
    timeout_s: float,
    value_bytes: int = PROBE_VALUE_BYTES,
) -> SharedProbe:
    try:
        target = parse_shared_url(url, variable)
    except SharedUrlError as error:
        return SharedProbe("(unparsable)", str(error), bad_url=True)
    client = SharedClient(target, timeout_s, max_connections=2)
    try:
        facts = client.server_facts()
        rtts = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            client.ping()
            rtts.append(time.perf_counter() - started)
        key = f"{prefix}:doctor:{secrets.token_hex(8)}"
        value = os.urandom(value_bytes)
        started = time.perf_counter()
        stored = client.set_absent([(key, [value])])[0]
        set_s = time.perf_counter() - started
        started = time.perf_counter()
        into = bytearray(value_bytes)
        reply = client.get_into([(key, [memoryview(into)])])[0]
        get_s = time.perf_counter() - started
        back = bytes(into) if reply is True else reply
        client.delete([key])
    except SharedUnavailable as error:
        return SharedProbe(target.display, str(error), auth_failed=error.auth)
    finally:
        client.close()
    if isinstance(stored, Exception) or back != value:
        reason = stored if isinstance(stored, Exception) else "the value read back differs"
        return SharedProbe(
            target.display, f"a test value could not be stored: {reason}", facts=facts
        )
    mib = value_bytes / (1 << 20)
    return SharedProbe(
        target.display,
        facts=facts,
        rtt_ms=statistics.median(rtts) * 1000,
        value_bytes=value_bytes,
        set_mib_s=mib / set_s,
        get_mib_s=mib / get_s,
    )
