"""Why a DRAM policy loses hits on agentic traffic: measured on the planner's simulation.

Two questions of issue 19, each answered with a count over a whole replay:

* **Does the policy evict the session that comes back next?** At every eviction, each victim
  chunk's session (the session whose request stored it) is compared with every other session
  that still has chunks in the tier: ``returns_before_kept`` is the share of those kept
  sessions whose next request comes *after* the victim's. 1.0 means the policy threw out the
  session needed soonest and kept everyone else (the worst choice); 0.0 means it threw out
  the session needed last (what the optimal policy does).
* **Does eviction cut chains, leaving tails nobody can reach?** A lookup runs from the device
  hit's end until the first chunk the tier lacks; ``stranded_tokens`` counts the tokens of
  chunks past that miss that the tier held all the same (space spent on KV the request could
  not use, and recomputed), and ``orphan_share`` is the mean share of resident chunks whose
  predecessor in the chain is not resident (sampled every ``sample_every`` requests).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from atom_tier.plan.policies import CachePolicy, Key
from atom_tier.plan.simulator import DRAM, Hierarchy, HierarchySpec, TierSpec
from atom_tier.plan.workload import Workload

Session = tuple[str, int]


@dataclass
class EvictionFacts:
    policy: str
    chunks: int
    hit_tokens: int = 0
    victims: int = 0
    victims_returning: int = 0  # victims whose session sends another request
    returns_before_kept: float = 0.0  # mean over returning victims (see module docstring)
    stranded_tokens: int = 0
    orphan_samples: list[float] = field(default_factory=list)

    @property
    def orphan_share(self) -> float:
        samples = self.orphan_samples
        return sum(samples) / len(samples) if samples else 0.0


class _Recorder(CachePolicy):
    """Passes every call to ``inner`` and keeps what the study needs: who stored each chunk,
    and the victims of each eviction."""

    def __init__(self, inner: CachePolicy, study: _Study) -> None:
        super().__init__(inner.capacity)
        self.inner = inner
        self.name = inner.name
        self.study = study

    def __contains__(self, key: Key) -> bool:
        return key in self.inner

    def __len__(self) -> int:
        return len(self.inner)

    def insert(self, key: Key) -> None:
        self.inner.insert(key)
        self.study.stored(key)

    def evict(self, n: int, protected: Collection[Key]) -> list[Key] | None:
        victims = self.inner.evict(n, protected)
        if victims:
            self.study.evicted(victims)
        return victims

    def touch(self, keys: Sequence[Key]) -> None:
        self.inner.touch(keys)

    def on_store_miss(self, keys: Sequence[Key]) -> None:
        self.inner.on_store_miss(keys)

    def on_request_finished(
        self, keys: Sequence[Key], insertion_only: Collection[Key], reused: Collection[Key]
    ) -> None:
        self.inner.on_request_finished(keys, insertion_only, reused)


class _Study(Hierarchy):
    def __init__(self, workload: Workload, spec: HierarchySpec, sample_every: int) -> None:
        super().__init__(spec, workload.chunk_tokens)
        self.facts = EvictionFacts(spec.dram.policy, spec.dram.chunks)
        self.dram = _Recorder(self.dram, self)
        self.requests = workload.requests
        self.sample_every = sample_every
        self.chunk_tokens = workload.chunk_tokens
        self.serial = -1
        self.owner: dict[Key, Session] = {}
        self.resident: dict[Session, int] = defaultdict(int)
        self.parent: dict[Key, Key | None] = {}
        self.arrivals: dict[Session, list[int]] = defaultdict(list)
        for request in workload.requests:
            self.arrivals[(request.session_id, request.cycle)].append(request.serial)
        self._returning_sum = 0.0

    def _session(self) -> Session:
        request = self.requests[self.serial]
        return (request.session_id, request.cycle)

    def _next_arrival(self, session: Session) -> float:
        serials = self.arrivals[session]
        index = bisect.bisect_right(serials, self.serial)
        return serials[index] if index < len(serials) else float("inf")

    def stored(self, key: Key) -> None:
        session = self._session()
        self.owner[key] = session
        self.resident[session] += 1

    def evicted(self, victims: list[Key]) -> None:
        facts = self.facts
        facts.victims += len(victims)
        kept = {s: self._next_arrival(s) for s, count in self.resident.items() if count}
        by_session: dict[Session, int] = defaultdict(int)
        for key in victims:
            session = self.owner.pop(key)
            self.resident[session] -= 1
            by_session[session] += 1
        for session, count in by_session.items():
            arrival = kept[session]
            if arrival == float("inf"):
                continue
            others = [a for s, a in kept.items() if s != session]
            later = sum(1 for a in others if a > arrival)
            facts.victims_returning += count
            self._returning_sum += count * (later / len(others) if others else 0.0)

    def _lookup(
        self, keys: Sequence[int], start: int, limit: int, inserted: list[int]
    ) -> list[str]:
        self.serial += 1
        request = self.requests[self.serial]
        covered = request.covered_chunks
        for index in range(covered):
            self.parent.setdefault(keys[index], keys[index - 1] if index else None)
        sources = super()._lookup(keys, start, limit, inserted)
        miss = start + len(sources)
        if miss < limit:
            dram = self.dram
            stranded = sum(1 for key in keys[miss + 1 : covered] if key in dram)
            self.facts.stranded_tokens += stranded * self.chunk_tokens
        if self.serial % self.sample_every == 0 and self.owner:
            orphans = sum(
                1
                for key in self.owner
                if (parent := self.parent.get(key)) is not None and parent not in self.owner
            )
            self.facts.orphan_samples.append(orphans / len(self.owner))
        return sources


def study_evictions(
    workload: Workload, device: Sequence[int], chunks: int, policy: str, sample_every: int = 50
) -> EvictionFacts:
    """The eviction facts of a DRAM tier of ``chunks`` chunks under ``policy`` (no NVMe)."""
    study = _Study(workload, HierarchySpec(TierSpec(DRAM, chunks, policy)), sample_every)
    result = study.run(workload, device)
    facts = study.facts
    facts.hit_tokens = result.tiers[DRAM].hit_tokens
    if facts.victims_returning:
        facts.returns_before_kept = study._returning_sum / facts.victims_returning
    return facts
