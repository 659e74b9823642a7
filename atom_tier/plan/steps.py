"""A time model that runs vLLM's engine step by step (continuous batching).

vLLM's scheduler (``vllm/v1/core/sched/scheduler.py``, ``Scheduler.schedule``) builds each
engine step from a token budget, ``max_num_batched_tokens`` (2,048 on the CPU platform for
the API server, ``EngineArgs`` defaults):

1. the running requests first, in the order they were admitted: one prompt chunk of up to
   what is left of the budget while a request prefills (chunked prefill), one token a step
   while it decodes;
2. then the waiting queue, first come first served, while budget is left and fewer than
   ``max_num_seqs`` requests run: the queue's head is looked up in the caches and admitted
   once the device blocks no running request holds can take its prompt's new blocks
   (``KVCacheManager.allocate_slots``; when they cannot, nothing behind it is admitted). A
   request that loads from the connector's tiers holds its blocks and waits for the
   asynchronous load (``WAITING_FOR_REMOTE_KVS``) without the step: it runs once the load
   is done, before the waiting queue's head.

A request stores the prompt chunks each of its steps completes in the DRAM tier, from that
step on (vLLM's ``prepare_store`` at the step's schedule), not at its lookup.

A step takes ``step_s`` + ``token_s`` x tokens scheduled in it. A request's first token comes
at the end of the step that completes its prompt, each further token one step later; it ends
with its last token, when its blocks are freed and its user thinks. So a request alone gets
whole steps, and one beside a long prefill waits for it, as on the server.

The two step costs are the server's own: :func:`calibrate` finds the ``step_s`` and
``token_s`` at which the simulated run's mean prefill time per request (vLLM's
``request_prefill_time_seconds``: scheduled to first token) and mean decode time per token
(``request_decode_time_seconds`` over the tokens after each request's first) are the ones
its ``/metrics`` hold. Both are linear in the two costs for a given schedule of steps, so
each round solves two equations on the schedule of the previous one. Load rate: loaded
bytes over load time (``kv_offload_load_*``), as in :mod:`atom_tier.plan.latency`.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from atom_tier.plan.closed_loop import ClosedLoop
from atom_tier.plan.device import Held
from atom_tier.plan.latency import fresh_caches
from atom_tier.plan.simulator import HierarchySpec, Looked, SimulationResult
from atom_tier.plan.workload import PlannedRequest
from atom_tier.replay.metrics import parse_prometheus
from atom_tier.replay.traces import ReplayInputError

MAX_BATCHED_TOKENS = 2048  # vLLM's max_num_batched_tokens on CPU, API server
MAX_RUNNING = 128  # vLLM's max_num_seqs on CPU, API server


@dataclass(frozen=True)
class StepModel:
    """Costs of one engine step and the scheduler's limits."""

    step_s: float
    token_s: float
    load_tokens_per_s: float = math.inf
    max_batched_tokens: int = MAX_BATCHED_TOKENS
    max_running: int = MAX_RUNNING

    def __post_init__(self) -> None:
        if self.step_s < 0 or self.token_s < 0 or self.step_s + self.token_s <= 0:
            raise ReplayInputError("step costs must not be negative, and not both 0")
        if not self.load_tokens_per_s > 0:
            raise ReplayInputError("the load rate must be positive")
        if self.max_batched_tokens < 1 or self.max_running < 1:
            raise ReplayInputError("the token budget and running requests must be positive")

    def step_time(self, tokens: int) -> float:
        return self.step_s + self.token_s * tokens

    def describe(self) -> str:
        return (
            f"vLLM's engine steps: up to {self.max_batched_tokens:,} tokens a step (running "
            f"requests first, then the FIFO queue while the device blocks take its head), "
            f"step = {self.step_s * 1000:.2f} ms + {self.token_s * 1e6:.1f} us x tokens; "
            f"loads at {self.load_tokens_per_s:,.0f} tok/s, beside the steps"
        )


@dataclass
class _Running:
    request: PlannedRequest
    prefill: int  # prompt tokens left to compute
    decode: int  # tokens left after the first
    device: Held
    hierarchy: Looked | None
    scheduled: float = math.nan  # start of its first step (after any load)


@dataclass
class StepTimes:
    """Per request, in the order sent; and the schedule's sums for :func:`calibrate`."""

    sent: list[float] = field(default_factory=list)
    scheduled: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    # Over requests' prefill (first step to first token) and decode (after): steps and
    # tokens of the steps they spanned, and the tokens they decoded.
    prefill_steps: int = 0
    prefill_step_tokens: int = 0
    decode_steps: int = 0
    decode_step_tokens: int = 0
    decoded: int = 0
    steps: int = 0

    @property
    def mean_latency_s(self) -> float:
        return sum(e - s for e, s in zip(self.ended, self.sent, strict=True)) / len(self.sent)

    @property
    def mean_prefill_s(self) -> float:
        """Scheduled to first token, over requests that got it (vLLM's prefill time)."""
        pairs = [(f, s) for f, s in zip(self.first_token, self.scheduled, strict=True)
                 if not math.isnan(f)]  # fmt: skip
        return sum(f - s for f, s in pairs) / len(pairs) if pairs else math.nan

    @property
    def decode_s_per_token(self) -> float:
        """First to last token of the requests that ended, per token after the first."""
        spans = [e - f for e, f in zip(self.ended, self.first_token, strict=True)
                 if not math.isnan(e)]  # fmt: skip
        return sum(spans) / self.decoded if self.decoded else math.nan

    @property
    def mean_queue_s(self) -> float:
        pairs = zip(self.scheduled, self.sent, strict=True)
        return sum(a - s for a, s in pairs) / len(self.sent)


class StepSimulation:
    """The caches and vLLM's engine, step by step, over a :class:`ClosedLoop`'s requests."""

    def __init__(
        self,
        spec: HierarchySpec,
        device_chunks: int | None,
        model: StepModel,
        *,
        chunk_tokens: int,
        block_tokens: int,
    ) -> None:
        self.device, self.hierarchy = fresh_caches(spec, device_chunks, chunk_tokens, block_tokens)
        self.model = model
        self.times = StepTimes()
        self._order: dict[int, int] = {}  # serial -> position in times

    def _admit(self, request: PlannedRequest, time: float) -> tuple[_Running, int]:
        device_tokens = self.device.lookup(request, time)
        loaded = self.hierarchy.lookup(request, device_tokens, time, defer=True)
        run = _Running(
            request,
            # vLLM computes at least the prompt's last token (hits stop before it).
            prefill=max(1, request.input_tokens - device_tokens - loaded),
            decode=max(0, request.output_tokens - 1),
            device=self.device.detach(),
            hierarchy=self.hierarchy.detach(),
        )
        return run, loaded

    def run(self, loop: ClosedLoop) -> None:
        model, times = self.model, self.times
        waiting: deque[PlannedRequest] = deque()
        running: list[_Running] = []
        loading: list[tuple[float, int, _Running]] = []
        now = 0.0
        while True:
            for request in loop.sends(now):
                self._order[request.serial] = len(times.sent)
                times.sent.append(request.time)
                for column in (times.scheduled, times.first_token, times.ended):
                    column.append(math.nan)
                waiting.append(request)
            budget, plan = model.max_batched_tokens, []
            for run in running:
                if not budget:
                    break
                tokens = min(run.prefill, budget) if run.prefill else 1
                plan.append((run, tokens))
                budget -= tokens
            for ready, _, loading_run in loading:  # vLLM's complete_load unpins their chunks
                looked = loading_run.hierarchy
                if ready <= now and looked is not None and looked.pins:
                    self.hierarchy.loaded(looked, ready)
            # Loads done come first (vLLM's ``kv_holding_waiting``), then the queue's head.
            while loading and loading[0][0] <= now and budget and len(running) < model.max_running:
                run = heapq.heappop(loading)[2]
                budget -= self._start(run, now, running, plan, budget)
            while waiting and budget and len(running) + len(loading) < model.max_running:
                head = waiting[0]
                if (running or loading) and not self.device.fits(head, now):
                    break
                waiting.popleft()
                run, loaded = self._admit(head, now)
                if loaded and math.isfinite(model.load_tokens_per_s):
                    ready = now + loaded / model.load_tokens_per_s
                    heapq.heappush(loading, (ready, head.serial, run))
                    continue
                budget -= self._start(run, now, running, plan, budget)
            if not plan:
                events = [t for t in (loop.next_time(), loading[0][0] if loading else None)
                          if t is not None]  # fmt: skip
                if not events:
                    break
                now = max(now, min(events))
                continue
            total = sum(tokens for _, tokens in plan)
            end = now + model.step_time(total)
            times.steps += 1
            for run in running:  # every running request waits out the step
                if run.prefill:
                    times.prefill_steps += 1
                    times.prefill_step_tokens += total
                else:
                    times.decode_steps += 1
                    times.decode_step_tokens += total
            for run, tokens in plan:
                position = self._order[run.request.serial]
                if run.prefill:
                    run.prefill -= tokens
                    if not run.prefill:
                        times.first_token[position] = end
                    # The chunks this step completes are stored from its schedule on.
                    if run.hierarchy is not None and run.hierarchy.pending:
                        computed = run.request.input_tokens - run.prefill
                        self.hierarchy.store(run.hierarchy, computed, now)
                else:
                    run.decode -= 1
                    times.decoded += 1
            finished = [run for run in running if not run.prefill and not run.decode]
            for run in finished:
                self.device.hold_detached(run.device, end)
                self.hierarchy.hold_detached(run.hierarchy, end)
                times.ended[self._order[run.request.serial]] = end
                loop.ended(run.request, end)
            running = [run for run in running if run.prefill or run.decode]
            now = end

    def _start(
        self,
        run: _Running,
        now: float,
        running: list[_Running],
        plan: list[tuple[_Running, int]],
        budget: int,
    ) -> int:
        """``run`` joins the running requests at the step starting ``now``; its tokens."""
        run.scheduled = now
        self.times.scheduled[self._order[run.request.serial]] = now
        running.append(run)
        tokens = min(run.prefill, budget)
        plan.append((run, tokens))
        return tokens

    def result(self) -> SimulationResult:
        self.hierarchy.finish()
        return self.hierarchy.result


def solve_costs(times: StepTimes, prefill_s: float, decode_s: float) -> tuple[float, float]:
    """``step_s`` and ``token_s`` at which ``times``' schedule gives a mean prefill time per
    request of ``prefill_s`` and a mean decode time per token of ``decode_s``:

        step_s x prefill steps / requests + token_s x their tokens / requests = prefill_s
        step_s x decode steps / decoded + token_s x their tokens / decoded = decode_s
    """
    requests = sum(1 for t in times.first_token if not math.isnan(t))
    if not requests or not times.decoded:
        raise ReplayInputError("the simulated run holds no prefilled and decoded request")
    p1, p2 = times.prefill_steps / requests, times.prefill_step_tokens / requests
    d1, d2 = times.decode_steps / times.decoded, times.decode_step_tokens / times.decoded
    det = p1 * d2 - p2 * d1
    if det == 0:
        raise ReplayInputError("the step costs cannot be told apart on this schedule")
    step_s = (prefill_s * d2 - p2 * decode_s) / det
    token_s = (p1 * decode_s - d1 * prefill_s) / det
    if step_s < 0:  # decode steps no shorter than prefill tokens explain: no fixed cost
        step_s, token_s = 0.0, prefill_s / p2
    return step_s, token_s


def calibrate(
    simulate: Callable[[StepModel], StepTimes],
    start: StepModel,
    *,
    prefill_s: float,
    decode_s: float,
    rounds: int = 8,
    tolerance: float = 0.005,
) -> tuple[StepModel, int]:
    """The step costs at which ``simulate``'s schedule reproduces the server's mean prefill
    time per request ``prefill_s`` and decode time per token ``decode_s``; and the rounds
    it took (each solves :func:`solve_costs` on the previous round's schedule)."""
    model = start
    for done in range(1, rounds + 1):
        step_s, token_s = solve_costs(simulate(model), prefill_s, decode_s)
        previous, model = model, replace(model, step_s=step_s, token_s=token_s)
        if math.isclose(step_s, previous.step_s, rel_tol=tolerance, abs_tol=1e-5) and (
            math.isclose(token_s, previous.token_s, rel_tol=tolerance)
        ):
            return model, done
    return model, rounds


@dataclass(frozen=True)
class StepTargets:
    """What :func:`calibrate` reproduces, from a server's ``/metrics`` at the end of a run."""

    prefill_s: float  # mean request_prefill_time_seconds (scheduled to first token)
    decode_s: float  # request_decode_time_seconds per token after each request's first
    computed_per_request: float  # request_prefill_kv_computed_tokens per request
    load_tokens_per_s: float  # kv_offload_load_bytes / KV bytes per token / load time

    def start(self, **limits: int) -> StepModel:
        """A first guess: half the decode time per step, the rest of the prefill per token."""
        step_s = self.decode_s / 2
        token_s = max(self.prefill_s - step_s, self.prefill_s / 2) / self.computed_per_request
        return StepModel(step_s, token_s, self.load_tokens_per_s, **limits)


def step_targets_from_metrics(text: str, *, kv_bytes_per_token: float) -> StepTargets:
    samples = parse_prometheus(text)

    def total(name: str) -> float:
        return sum(s.value for s in samples if s.name == f"vllm:{name}")

    requests = total("request_prefill_time_seconds_count")
    decoded = total("generation_tokens_total") - requests
    computed = total("request_prefill_kv_computed_tokens_sum")
    if not requests or decoded <= 0 or computed <= 0:
        raise ReplayInputError("the server's /metrics hold no prefilled and decoded request")
    load_s, loaded = total("kv_offload_load_time_total"), total("kv_offload_load_bytes_total")
    return StepTargets(
        prefill_s=total("request_prefill_time_seconds_sum") / requests,
        decode_s=total("request_decode_time_seconds_sum") / decoded,
        computed_per_request=computed / requests,
        load_tokens_per_s=loaded / kv_bytes_per_token / load_s if load_s else math.inf,
    )
