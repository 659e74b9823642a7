"""A time model for the planner: one vLLM server, its admission queue and each request's time.

The planner's closed-loop users send a request, wait for its answer, think, and send the next
one (:func:`~atom_tier.plan.workload.build_workload`). How long the answer takes decides how
users interleave, and so what the caches still hold when a user comes back. With one mean
latency for every request, a request that hits the DRAM tier comes back as late as one that
prefills its whole prompt; in vLLM it comes back sooner, while the tier still holds its
session. This model gives each request its own time:

- **Running time** = ``overhead_s`` + prefilled tokens / ``prefill_tokens_per_s`` + loaded
  tokens / ``load_tokens_per_s`` + (output tokens - 1) x ``decode_s_per_token``: vLLM's
  prefill time (scheduled to first token) and decode time (first to last token), at rates
  measured under the same load (so they hold how running requests slow each other down).
- **Admission**, first come first served (vLLM's waiting queue: when its head cannot be
  scheduled, nothing behind it is), one of:

  - ``blocks``: once the device blocks no running request holds can take the prompt's new
    blocks (vLLM's admission gate, ``KVCacheManager.allocate_slots`` with
    ``full_sequence_must_fit``, see :meth:`~atom_tier.plan.device.DeviceCache.admit`);
  - ``throughput``: each admission takes the server for running time / ``running`` seconds,
    ``running`` being the requests vLLM ran at once on average (inference time over the
    run's length): the server's measured throughput, right while it is saturated.

  A request is looked up in the caches when admitted, not when sent, stores its chunks in
  the DRAM tier at its first token (when vLLM has computed them), and holds its device
  blocks until it ends.
- The answer comes back when the request ends: queue time + running time.

The rates are measured, not fitted to hits: :func:`server_model_from_metrics` reads them from
a server's ``/metrics`` (vLLM's request prefill, decode and inference time histograms, its
computed and generated token counters, the connector's load time and bytes).

Its known flaw: the rates are measured while requests share the server, yet a request this
model runs alone is not sped up as on the server. :mod:`atom_tier.plan.steps` models vLLM's
engine steps instead (the default of ``bench/plan_vs_arms.py`` since three-arm run 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from atom_tier.plan.device import DeviceCache
from atom_tier.plan.simulator import Hierarchy, HierarchySpec, SimulationResult
from atom_tier.plan.workload import PlannedRequest, Workload
from atom_tier.replay.metrics import parse_prometheus
from atom_tier.replay.traces import ReplayInputError

ADMISSIONS = ("blocks", "throughput")


@dataclass(frozen=True)
class ServerModel:
    """Rates of one server (its KV pool is the device cache's)."""

    prefill_tokens_per_s: float
    decode_s_per_token: float
    load_tokens_per_s: float = math.inf
    overhead_s: float = 0.0
    admission: str = "blocks"
    running: float = 1.0  # requests running at once, on average (``throughput`` admission)

    def __post_init__(self) -> None:
        if not self.prefill_tokens_per_s > 0 or not self.load_tokens_per_s > 0:
            raise ReplayInputError("prefill and load rates must be positive")
        if self.admission not in ADMISSIONS:
            raise ReplayInputError(f"admission must be one of {ADMISSIONS}, got {self.admission}")
        if not self.running > 0:
            raise ReplayInputError(f"requests running at once must be positive, {self.running}")
        if self.decode_s_per_token < 0 or self.overhead_s < 0:
            raise ReplayInputError("decode time and overhead must not be negative")

    def running_s(self, prefilled: int, loaded: int, output: int) -> float:
        return (
            self.overhead_s
            + prefilled / self.prefill_tokens_per_s
            + loaded / self.load_tokens_per_s
            + max(0, output - 1) * self.decode_s_per_token
        )

    def describe(self) -> str:
        admission = (
            "once the device blocks no running request holds take the prompt's new blocks"
            if self.admission == "blocks"
            else f"at the measured throughput of {self.running:.2f} requests running at once"
        )
        return (
            f"one server, FIFO admission {admission}; running time = {self.overhead_s:g} s + "
            f"prefilled tokens / {self.prefill_tokens_per_s:,.0f} tok/s + loaded tokens / "
            f"{self.load_tokens_per_s:,.0f} tok/s + (output tokens - 1) x "
            f"{self.decode_s_per_token * 1000:.2f} ms"
        )


@dataclass
class TimedRequests:
    """Per request, in the order sent: when it was admitted and when it ended."""

    admitted: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)

    @property
    def mean_latency_s(self) -> float:
        return sum(e - s for e, s in zip(self.ended, self.sent, strict=True)) / len(self.sent)

    @property
    def mean_queue_s(self) -> float:
        return sum(a - s for a, s in zip(self.admitted, self.sent, strict=True)) / len(self.sent)


def fresh_caches(
    spec: HierarchySpec, device_chunks: int | None, chunk_tokens: int, block_tokens: int
) -> tuple[DeviceCache, Hierarchy]:
    """An empty device cache and tier hierarchy for a timed simulation."""
    # The device cache reads only the chunk and block sizes from the workload.
    shape = Workload((), chunk_tokens, block_tokens, 0, 0, 0, 0.0)
    return DeviceCache(shape, device_chunks), Hierarchy(spec, chunk_tokens)


class TimedSimulation:
    """The caches and the server, request by request, as the workload builder sends them:
    pass :meth:`respond` as :func:`~atom_tier.plan.workload.build_workload`'s ``respond``."""

    def __init__(
        self,
        spec: HierarchySpec,
        device_chunks: int | None,
        model: ServerModel,
        *,
        chunk_tokens: int,
        block_tokens: int,
    ) -> None:
        self.device, self.hierarchy = fresh_caches(spec, device_chunks, chunk_tokens, block_tokens)
        self.model = model
        self.block_tokens = block_tokens
        self.last_admitted = 0.0
        self.times = TimedRequests()

    def respond(self, request: PlannedRequest) -> float:
        # First come first served: not before the request sent before it.
        start = max(request.time, self.last_admitted)
        if self.model.admission == "blocks":
            start = self.device.admit(request, start)
            self.last_admitted = start
        device_tokens = self.device.lookup(request, start)
        loaded = self.hierarchy.lookup(request, device_tokens, start, defer=True)
        prefilled = request.input_tokens - device_tokens - loaded
        running = self.model.running_s(prefilled, loaded, request.output_tokens)
        end = start + running
        if self.model.admission == "throughput":
            self.last_admitted = start + running / self.model.running
        self.device.hold(end)
        # Its chunks are stored once computed: at its first token.
        self.hierarchy.hold(end, start + self.model.running_s(prefilled, loaded, 1))
        self.times.sent.append(request.time)
        self.times.admitted.append(start)
        self.times.ended.append(end)
        return end

    def result(self) -> SimulationResult:
        self.hierarchy.finish()
        return self.hierarchy.result


def server_model_from_metrics(
    text: str,
    *,
    kv_bytes_per_token: float,
    elapsed_s: float,
    admission: str = "blocks",
    overhead_s: float = 0.0,
) -> ServerModel:
    """The rates vLLM measured over a run, from its ``/metrics`` text at the end:

    - prefill: computed prompt tokens (``request_prefill_kv_computed_tokens``) per second of
      prefill time (``request_prefill_time_seconds``) less the connector's load time;
    - loads: loaded bytes (``kv_offload_load_bytes_total``) / KV bytes per token per second
      of load time (``kv_offload_load_time_total``); none loaded: free;
    - decode: decode time (``request_decode_time_seconds``) per generated token after each
      request's first (``generation_tokens_total`` less the requests);
    - requests running at once: inference time (``request_inference_time_seconds``) over the
      run's length ``elapsed_s``.
    """
    samples = parse_prometheus(text)

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == f"vllm:{name}")

    requests = total("request_prefill_time_seconds_count")
    if not requests:
        raise ReplayInputError("the server's /metrics hold no finished request to time")
    load_s, loaded_bytes = total("kv_offload_load_time_total"), total("kv_offload_load_bytes_total")
    prefill_s = total("request_prefill_time_seconds_sum") - load_s
    computed = total("request_prefill_kv_computed_tokens_sum")
    decoded = total("generation_tokens_total") - requests
    if prefill_s <= 0 or computed <= 0:
        raise ReplayInputError("the server's /metrics hold no prefill time or computed tokens")
    return ServerModel(
        prefill_tokens_per_s=computed / prefill_s,
        decode_s_per_token=total("request_decode_time_seconds_sum") / decoded if decoded else 0.0,
        load_tokens_per_s=loaded_bytes / kv_bytes_per_token / load_s if load_s else math.inf,
        overhead_s=overhead_s,
        admission=admission,
        running=total("request_inference_time_seconds_sum") / elapsed_s,
    )
