"""AtomTierSharedTier: the Valkey/Redis chunk store behind vLLM 0.32's ``TieringOffloadingSpec``.

vLLM's tier factory imports this class from the ``secondary_tiers`` entry that
``atom_tier.tiers.shared_secondary_tier_config`` builds. The entry carries no address and no
secret: vLLM logs its configuration, so the URL (with its password) and the signing secret are
read from atom-tier's settings here, in the engine core, and only ever printed redacted.

Lookups wait on the network on the scheduler thread only within a small budget per step
(``ATOM_TIER_SHARED_LOOKUP_BUDGET_MS``): a request's first chunk that reaches this tier is
probed there, and when the server does not hold it the answer is MISS at once (a prefix cannot
be used past its first hole), so a new prompt is not deferred by a step. Every other key goes
to vLLM's ``AsyncLookupManager``: it collects a step's keys, one background thread checks them
(pipelined, per request, stopping at the first hole) while the model runs, and the scheduler
sees RETRY until the answer is in.
Stores and loads run on the store's I/O threads. The tier shares chunks with every replica
whose model identity (weights fingerprint and numerics), KV layout, chunking and signing key
match; the served name is left out, so replicas may mount the weights at different paths.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import override
from vllm.v1.kv_offload.base import (
    Locality,
    LookupResult,
    OffloadKey,
    ReqContext,
    ScheduleEndContext,
)
from vllm.v1.kv_offload.tiering.async_lookup import AsyncLookupManager
from vllm.v1.kv_offload.tiering.base import JobResult
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from atom_tier.log import get_logger
from atom_tier.settings import load_settings, variable_of
from atom_tier.tiers.shared_store import SHARED_COUNTER_NAMES, SHARED_GAUGE_NAMES, SharedChunkStore
from atom_tier.tiers.shared_url import parse_shared_url
from atom_tier.tiers.shared_value import load_signer
from atom_tier.tiers.store_tier import StoreBackedTier
from atom_tier.tiers.vllm_tier import namespace_of, resolve_identity

if TYPE_CHECKING:
    from vllm.v1.kv_offload.base import OffloadingSpec
    from vllm.v1.kv_offload.tiering.backpressure import BackpressureDetector

logger = get_logger(__name__)

METRIC_PREFIX = "atom_tier:shared_tier_"


class _SharedLookups(AsyncLookupManager):
    """vLLM's async lookup manager over the store's pipelined existence checks."""

    def __init__(self, store: SharedChunkStore, tier_type: str) -> None:
        super().__init__(tier_type=tier_type)
        self._store = store

    @override
    def batch_lookup(self, keys: list[OffloadKey], req_context: ReqContext) -> Iterable[bool]:
        return self._store.exists_prefix([bytes(key) for key in keys])


class _FirstKeyProbe:
    """The scheduler thread's probe of each request's first key (scheduler-owned, no lock).

    vLLM's async lookup answers a key it has not checked with RETRY, which defers the request
    by one scheduler step even when the server would have said "absent" in a fraction of a
    millisecond; on prompts nobody stored (most new ones) that step is the whole cost of the
    tier. A probe that is absent settles the request's lookup here; one that is present, or
    unanswered within the budget, leaves it to the async path. A step spends at most about
    twice the budget (the probe in progress when it runs out), and a probe left unanswered
    pauses probing for PAUSE_S, so a slow or distant server costs the scheduler little.
    """

    PAUSE_S = 1.0

    def __init__(self, store: SharedChunkStore, budget_s: float) -> None:
        self._store = store
        self._budget_s = budget_s
        self._spent_s = 0.0
        self._paused_until = 0.0
        self._probed: set[str] = set()  # requests whose first key was offered to the probe
        self._absent: dict[str, OffloadKey] = {}  # request -> its first key, not on the server

    def absent(self, key: OffloadKey, req_id: str) -> bool:
        """True when ``key`` is this request's first key and the server does not hold it."""
        if self._absent.get(req_id) == key:
            return True
        if req_id in self._probed or self._budget_s <= 0:
            return False
        self._probed.add(req_id)
        now = time.monotonic()
        if self._spent_s >= self._budget_s or now < self._paused_until:
            return False
        found = self._store.probe(bytes(key), self._budget_s)
        done = time.monotonic()
        self._spent_s += done - now
        if found is None:
            self._paused_until = done + self.PAUSE_S
        elif not found:
            self._absent[req_id] = key
        return found is False

    def end_step(self) -> None:
        self._spent_s = 0.0

    def forget(self, req_id: str) -> None:
        self._probed.discard(req_id)
        self._absent.pop(req_id, None)


class AtomTierSharedTier(StoreBackedTier):
    """Secondary tier in a Valkey/Redis server or cluster shared by every replica."""

    # vLLM has no "shared" source; its fallback for a remote store is external_unspecified.
    cache_hit_source: ClassVar[CacheHitSource] = CacheHitSource.EXTERNAL_UNSPECIFIED
    what = "shared tier"
    metric_prefix = METRIC_PREFIX
    counter_names = SHARED_COUNTER_NAMES
    gauge_names = SHARED_GAUGE_NAMES
    store: SharedChunkStore

    def __init__(
        self,
        offloading_spec: OffloadingSpec,
        primary_kv_view: memoryview,
        tier_type: str,
        model_identity: Mapping[str, Any] | None = None,
        io_threads: int = 4,
        backpressure_detector: BackpressureDetector | None = None,
    ) -> None:
        super().__init__(offloading_spec, primary_kv_view, tier_type, backpressure_detector)
        self.locality = Locality.REMOTE
        settings = load_settings()
        if settings.shared_url is None:
            raise ValueError("the shared tier needs ATOM_TIER_SHARED_URL")
        target = parse_shared_url(settings.shared_url, variable_of("shared_url"))
        signer = load_signer(settings)
        self.identity = resolve_identity(model_identity, "shared")
        _, namespace = namespace_of(
            offloading_spec, self.block_size_bytes, self.identity.digest, scope_name=False
        )
        if signer is not None:  # signed chunks live apart: see shared_value
            namespace += b"-" + signer.key_id.encode()
        self.store = SharedChunkStore(
            target,
            namespace,
            prefix=settings.shared_prefix,
            signer=signer,
            timeout_s=settings.shared_timeout_s,
            io_threads=io_threads,
        )
        self._lookups = _SharedLookups(self.store, tier_type)
        self._probe = _FirstKeyProbe(self.store, settings.shared_lookup_budget_ms / 1000)
        self._failed_loads: deque[list[OffloadKey]] = deque()
        logger.info(
            "atom-tier shared tier (%s) at %s, key prefix %s:%s, model identity %s%s",
            *(tier_type, target.display, settings.shared_prefix, namespace.decode()),
            self.identity.describe(),
            ", chunks signed" if signer else "",
        )

    @override
    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        if self._probe.absent(key, req_context.req_id):
            return LookupResult.MISS
        found = self._lookups.lookup(key, req_context)
        if found is None:
            return LookupResult.RETRY
        return LookupResult.HIT if found else LookupResult.MISS

    @override
    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        self._probe.end_step()
        self._lookups.flush()

    @override
    def on_request_finished(self, req_context: ReqContext) -> None:
        self._probe.forget(req_context.req_id)
        self._lookups.cleanup(req_context.req_id)

    @override
    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        return  # the server's own LRU/LFU sees every read; a touch would cost a round trip

    @override
    def on_failed_load(self, keys: list[OffloadKey]) -> None:
        # Applied on the scheduler thread (get_finished_jobs): the cached HIT verdicts of these
        # keys turn to MISS, so the scheduler does not retry a load that cannot succeed.
        self._failed_loads.append(keys)

    @override
    def get_finished_jobs(self) -> Iterable[JobResult]:
        while self._failed_loads:
            self._lookups.mark_miss(self._failed_loads.popleft())
        return super().get_finished_jobs()

    @override
    def shutdown(self) -> None:
        self._lookups.shutdown()
        super().shutdown()
