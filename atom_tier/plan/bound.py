"""The DRAM tier's offline optimum: Belady's MIN with bypass. An upper bound, not a policy.

``min`` knows every future request, so no tier can run it; the eviction study
(``bench/eviction_study.py``, ``bench/eviction_bound.py``) computes it to say how many DRAM
hit tokens *any* policy could reach on a workload. It is deliberately absent from
:data:`atom_tier.plan.policies.POLICIES` and ``STUDY_POLICIES``: ``ATOM_TIER_EVICTION`` and the
planner's ``--eviction`` cannot select it.

**The sequence.** In the untimed simulation (:func:`atom_tier.plan.simulator.simulate`) the
device hits are computed before the DRAM tier is simulated (:func:`device_hits` reads the
workload and the device size only), so each request's lookup range is the same under every
DRAM policy: from the chunk holding the device hit's end (``start``) to the connector's limit
(``limit = min(covered, (input - 1) // chunk)``). Pass 1 walks the requests backwards and gives
each chunk a request may store its next use: the next request whose lookup range holds it.
Pass 2 walks them forwards with a tier of ``chunks`` keys: a request hits every chunk of its
lookup range that is resident (whether or not an earlier chunk missed), then the tier keeps,
among its resident keys and the request's chunks, the ``chunks`` keys used soonest (a key
never used again is dropped; a new key used later than every kept one is not admitted).

**Why it bounds every online policy** (DRAM tier alone, no secondary tier, untimed):

* What a policy may hold: the simulator inserts only chunks a request offers (its chunks from
  the lookup's stop to ``covered``, and its own tail chunks, which no later request looks up),
  all within ``chain[:covered]``, at that request, before the next one is looked up; it evicts
  only to make room (a policy can decline a store as well: an ``evict`` answering None fails
  the request's whole store). Any sequence of contents a policy produces is therefore one
  that pass 2's freer model allows (keep any subset of the resident keys and the request's
  ``chain[:covered]``, up to capacity), where bypass is per chunk.
* What a policy gets from it: the simulator counts a DRAM hit only for the contiguous run from
  ``start`` until the first missing chunk, and only when it loads at least one chunk; pass 2
  counts every resident chunk of the range, so the same contents never score less.
* Pass 2's choice is optimal for that freer model when every hit is worth the same (Belady's
  exchange argument: keeping a key used sooner instead of one used later gains a hit no later
  than it can lose one). The simulator's first hit chunk of a request counts only the tokens
  past the device hit, at most one chunk, so the bound counts **every hit chunk as a whole
  chunk** (``hit_tokens = hit_chunks * chunk_tokens``), which is at least what any policy's
  tokens are; with weights the exchange argument would not hold.

Not covered: a timed simulation (:mod:`atom_tier.plan.latency`), where a policy's loads change
when requests are admitted and so the device hits and the order of requests; NVMe or shared
tiers (promotions admit chunks the request does not store). On a real server the policy also
changes how fast requests finish, hence the order of the replay; the bound is for one fixed
order of requests.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from atom_tier.plan.workload import Workload


@dataclass(frozen=True)
class BoundResult:
    """Belady's MIN over one workload and DRAM size, in whole chunks."""

    chunks: int  # DRAM capacity
    chunk_tokens: int
    hit_chunks: int  # looked-up chunks that were resident
    lookup_chunks: int  # chunks of every request's lookup range
    reachable_chunks: int  # of those, chunks some earlier request held: an infinite tier's hits

    @property
    def hit_tokens(self) -> int:
        """The upper bound on any policy's DRAM hit tokens (see the module docstring)."""
        return self.hit_chunks * self.chunk_tokens


def lookup_ranges(workload: Workload, device: Sequence[int]) -> list[tuple[int, int]]:
    """Each request's chunks that the DRAM tier can serve, ``chain[start:limit]``, given its
    device hit tokens (the simulator's lookup before it stops at a miss)."""
    chunk = workload.chunk_tokens
    return [
        (device_tokens // chunk, min(request.covered_chunks, (request.input_tokens - 1) // chunk))
        for request, device_tokens in zip(workload.requests, device, strict=True)
    ]


def belady_min(workload: Workload, device: Sequence[int], chunks: int) -> BoundResult:
    """MIN with bypass over the DRAM tier's lookups of ``workload`` (device hits ``device``,
    as :func:`atom_tier.plan.simulator.device_hits` gives them) with ``chunks`` chunks."""
    if chunks < 0:
        raise ValueError(f"DRAM capacity must not be negative, got {chunks}")
    requests = workload.requests
    ranges = lookup_ranges(workload, device)
    never = len(requests)  # "no further use": later than every request
    # Pass 1, backwards: for each chunk a request may store, the next request looking it up.
    next_use: list[array[int]] = [array("q")] * len(requests)
    last: dict[int, int] = {}
    seen: set[int] = set()
    lookup_chunks = reachable = 0
    for serial in range(len(requests) - 1, -1, -1):
        request = requests[serial]
        keys = request.chain[: request.covered_chunks]
        next_use[serial] = array("q", [last.get(key, never) for key in keys])
        start, limit = ranges[serial]
        for key in keys[start:limit]:
            last[key] = serial
    # Pass 2, forwards: resident key -> its next use; a max-heap on next use, stale entries
    # (a key re-used since, or evicted) skipped when popped.
    resident: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    hits = 0
    for serial, request in enumerate(requests):
        keys = request.chain[: request.covered_chunks]
        start, limit = ranges[serial]
        if limit > start:
            looked = keys[start:limit]
            lookup_chunks += len(looked)
            hits += sum(1 for key in looked if key in resident)
            reachable += sum(1 for key in looked if key in seen)
        seen.update(keys)
        for key, use in zip(keys, next_use[serial], strict=True):
            if use == never:
                resident.pop(key, None)
            elif resident.get(key) != use:
                resident[key] = use
                heapq.heappush(heap, (-use, key))
        while len(resident) > chunks:
            use, key = heapq.heappop(heap)
            if resident.get(key) == -use:
                del resident[key]
        if len(heap) > 4 * len(resident) + 1024:
            heap = [(-use, key) for key, use in resident.items()]
            heapq.heapify(heap)
    return BoundResult(chunks, workload.chunk_tokens, hits, lookup_chunks, reachable)
