"""The replay run: closed-loop users on asyncio, periods, the ramp, the server's counters.

Each user replays one session at a time: request, wait for the whole streamed answer, wait
the (scaled, capped) recorded think time, next request; when its session ends it takes the next
one from the seeded order at once. Without recycling each session is replayed once and users
leave when the order runs out; with it the order starts over as new conversations. At the
duration limit requests still in flight are cancelled and not counted, so every arm is
measured over the same window. With several endpoints (replicas of one model) a ``Router``
picks each request's endpoint, and the servers' counters are read from each and summed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from atom_tier.replay.client import Completion, ReplayClient, ServerInfo, replay_request_id
from atom_tier.replay.metrics import CacheCounters, sum_counters
from atom_tier.replay.routing import ROUTING_MODES, Router
from atom_tier.replay.scheduler import RampController, SessionQueue, scaled_think
from atom_tier.replay.tokens import TokenMapper, warm_prefix_trace_tokens
from atom_tier.replay.traces import ReplayInputError, Session

# Consecutive failed requests after which the run stops: the server is down or rejects
# everything, and more requests would only repeat the same error.
MAX_CONSECUTIVE_FAILURES = 20
TICK_SECONDS = 1.0
# How long the final counters wait for the servers to let go of the requests cut off at the
# deadline: a request the server had queued when its client left can still be scheduled, and
# its cache hits counted, before the server sees the disconnect.
SETTLE_SECONDS = 10.0


@dataclass(frozen=True)
class ReplayOptions:
    duration: float = 120.0
    start_users: int = 1
    max_users: int = 4
    ttft_target: float | None = None
    ttft_metric: str = "p95"
    ramp_step: int = 1
    period: float = 10.0
    think_scale: float = 1.0
    max_think: float | None = 60.0
    recycle: bool = False
    seed: int = 0
    max_context: int | None = None
    label: str = "replay"
    routing: str = "round-robin"
    # kv-cache-tester's --warm-prefix-pct: share of the largest tool + system prefix that
    # every conversation starts with (same tokens in all of them); 0 turns it off.
    warm_prefix_pct: float = 0.5

    def validate(self) -> None:
        if self.duration <= 0:
            raise ReplayInputError(f"duration must be positive, got {self.duration}")
        if self.period <= 0:
            raise ReplayInputError(f"period must be positive, got {self.period}")
        if self.think_scale < 0:
            raise ReplayInputError(f"think scale must not be negative, got {self.think_scale}")
        if self.max_think is not None and self.max_think < 0:
            raise ReplayInputError(f"max think must not be negative, got {self.max_think}")
        if self.max_context is not None and self.max_context < 2:
            raise ReplayInputError(f"max context must be at least 2, got {self.max_context}")
        if not 0 <= self.warm_prefix_pct <= 1:
            raise ReplayInputError(
                f"warm prefix share must be in [0, 1], got {self.warm_prefix_pct}"
            )
        if self.routing not in ROUTING_MODES:
            raise ReplayInputError(
                f"routing must be one of {', '.join(ROUTING_MODES)}, got {self.routing!r}"
            )
        RampController(  # validates the user and ramp options
            self.start_users, self.max_users, self.ttft_target, self.ttft_metric, self.ramp_step
        )


@dataclass(frozen=True)
class RequestRecord:
    """One request as sent and answered; times in seconds from the start of the run."""

    user: int
    session_id: str
    cycle: int
    index: int
    start: float
    ttft: float | None
    latency: float
    input_tokens: int
    output_tokens: int
    error: str | None
    endpoint: str = ""  # base URL of the server that answered

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft is not None

    @property
    def end(self) -> float:
        return self.start + self.latency


@dataclass(frozen=True)
class PeriodRecord:
    index: int
    start: float
    end: float
    users: int
    target_users: int
    requests: tuple[RequestRecord, ...]
    cache: CacheCounters


@dataclass(frozen=True)
class Snapshot:
    """What the live progress line shows."""

    elapsed: float
    duration: float
    users: int
    target_users: int
    completed: int
    failed: int
    recent_ttfts: tuple[float, ...]
    recent_input_tps: float
    recent_output_tps: float


@dataclass
class ReplayResult:
    server: ServerInfo
    options: ReplayOptions
    token_scale: float
    started_at: datetime
    elapsed: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    periods: list[PeriodRecord] = field(default_factory=list)
    cache: CacheCounters = field(default_factory=CacheCounters)
    sessions_started: int = 0
    sessions_finished: int = 0
    sessions_truncated: int = 0
    sessions_skipped: int = 0
    routing: str = "round-robin"
    warm_prefix_tokens: int = 0  # after scaling
    # Every endpoint's base URL, in the order given, and its own counters over the run.
    endpoints: list[str] = field(default_factory=list)
    endpoint_cache: dict[str, CacheCounters] = field(default_factory=dict)

    @property
    def completed(self) -> list[RequestRecord]:
        return [r for r in self.records if r.ok]


ProgressCallback = Callable[[Snapshot, bool], None]


class Replay:
    """One run against one server or several; ``await run()`` returns the result.

    ``server`` describes the first of ``clients``; all of them serve the same model.
    ``max_model_len`` (default: the server's) bounds prompt + output of one request.
    """

    def __init__(
        self,
        clients: ReplayClient | Sequence[ReplayClient],
        server: ServerInfo,
        mapper: TokenMapper,
        sessions: Sequence[Session],
        options: ReplayOptions,
        on_progress: ProgressCallback | None = None,
        *,
        max_model_len: int | None = None,
    ) -> None:
        options.validate()
        self.model_len = max_model_len if max_model_len is not None else server.max_model_len
        self.clients = (clients,) if isinstance(clients, ReplayClient) else tuple(clients)
        urls = [c.base_url for c in self.clients]
        self.router = Router(options.routing, urls, seed=options.seed)
        self.mapper = mapper
        self.options = options
        self.on_progress = on_progress
        self.ramp = RampController(
            options.start_users,
            options.max_users,
            options.ttft_target,
            options.ttft_metric,
            options.ramp_step,
        )
        fitting = [s for s in sessions if self._fits(s, 0)]
        self.result = ReplayResult(server, options, mapper.token_scale, datetime.now(timezone.utc))
        self.result.sessions_skipped = len(sessions) - len(fitting)
        self.result.routing = options.routing
        self.result.endpoints = urls
        if not fitting:
            raise ReplayInputError(
                f"every session's first request is longer than the max context "
                f"({options.max_context} tokens); lower --token-scale or raise --max-context"
            )
        # As kv-cache-tester: the largest prefix among the traces that are replayed.
        mapper.use_warm_prefix(warm_prefix_trace_tokens(fitting, options.warm_prefix_pct))
        self.result.warm_prefix_tokens = mapper.warm_prefix_tokens
        self.queue = SessionQueue(fitting, seed=options.seed, recycle=options.recycle)
        self._t0 = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_user = 0
        self._failures = 0
        self._fatal: str | None = None

    def _fits(self, session: Session, index: int) -> bool:
        """kv-cache-tester's max-context rule: a session ends before its first request whose
        input is longer than the max context (the prompt is never cut). The server's length
        must also leave room for one output token."""
        tokens = self.mapper.shape(session, index).input_tokens
        if self.options.max_context is not None and tokens > self.options.max_context:
            return False
        return self.model_len is None or tokens < self.model_len

    def _output_tokens(self, input_tokens: int, wanted: int) -> int:
        """The recorded output, shortened where prompt + output would pass the server's
        length (kv-cache-tester would send it and get an error back)."""
        return wanted if self.model_len is None else min(wanted, self.model_len - input_tokens)

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    async def _user(self, user: int) -> None:
        options = self.options
        while True:
            taken = self.queue.take()
            if taken is None:
                return
            session, cycle = taken
            self.result.sessions_started += 1
            for index in range(len(session.requests)):
                if index:
                    delay = scaled_think(
                        session.think_before(index), options.think_scale, options.max_think
                    )
                    await asyncio.sleep(delay)
                if not self._fits(session, index):
                    self.result.sessions_truncated += 1
                    break
                shape = self.mapper.shape(session, index)
                prompt = self.mapper.prompt(session, index, cycle=cycle)
                client = self.clients[self.router.pick(session, cycle)]
                start = self._now()
                output = self._output_tokens(len(prompt), shape.output_tokens)
                answer = await client.complete(
                    self.result.server.model,
                    prompt,
                    output,
                    request_id=replay_request_id(session.session_id, cycle, index),
                )
                self._record(user, session, cycle, index, start, len(prompt), answer, client)
            else:
                self.result.sessions_finished += 1

    def _record(
        self,
        user: int,
        session: Session,
        cycle: int,
        index: int,
        start: float,
        prompt_len: int,
        answer: Completion,
        client: ReplayClient,
    ) -> None:
        if start + answer.latency > self.options.duration:
            return  # finished after the deadline: outside the measured window
        record = RequestRecord(
            user=user,
            session_id=session.session_id,
            cycle=cycle,
            index=index,
            start=start,
            ttft=answer.ttft,
            latency=answer.latency,
            input_tokens=answer.prompt_tokens or prompt_len,
            output_tokens=answer.output_tokens,
            error=answer.error,
            endpoint=client.base_url,
        )
        self.result.records.append(record)
        self._failures = 0 if record.ok else self._failures + 1
        if self._failures >= MAX_CONSECUTIVE_FAILURES and self._fatal is None:
            self._fatal = (
                f"the last {MAX_CONSECUTIVE_FAILURES} requests failed; the last error "
                f"(from {client.base_url}): {record.error}"
            )

    def _spawn_to(self, target: int) -> None:
        while len(self._tasks) < target and not self.queue.exhausted:
            self._next_user += 1
            task = asyncio.create_task(self._user(self._next_user))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _snapshot(self) -> Snapshot:
        now = self._now()
        window = max(self.options.period, TICK_SECONDS)
        recent = [r for r in self.result.records if r.ok and r.end >= now - window]
        span = min(window, now) or 1.0
        return Snapshot(
            elapsed=now,
            duration=self.options.duration,
            users=len(self._tasks),
            target_users=self.ramp.users,
            completed=sum(1 for r in self.result.records if r.ok),
            failed=sum(1 for r in self.result.records if not r.ok),
            recent_ttfts=tuple(r.ttft for r in recent if r.ttft is not None),
            recent_input_tps=sum(r.input_tokens for r in recent) / span,
            recent_output_tps=sum(r.output_tokens for r in recent) / span,
        )

    def _close_period(
        self, start: float, end: float, before: CacheCounters, after: CacheCounters
    ) -> PeriodRecord:
        inside = tuple(r for r in self.result.records if start <= r.end < end)
        period = PeriodRecord(
            index=len(self.result.periods),
            start=start,
            end=end,
            users=len(self._tasks),
            target_users=self.ramp.users,
            requests=inside,
            cache=after.minus(before),
        )
        self.result.periods.append(period)
        return period

    async def _counters(self) -> list[CacheCounters]:
        """Each endpoint's counters now, in endpoint order."""
        return list(await asyncio.gather(*(c.cache_counters() for c in self.clients)))

    async def _settled_counters(self) -> list[CacheCounters]:
        """The counters once no server holds a request (at most ``SETTLE_SECONDS``; a server
        other clients keep busy is read when that time is up)."""
        deadline = time.perf_counter() + SETTLE_SECONDS
        counters = await self._counters()
        while any(c.busy for c in counters) and time.perf_counter() < deadline:
            await asyncio.sleep(0.2)
            counters = await self._counters()
        return counters

    async def run(self) -> ReplayResult:
        options = self.options
        baselines = await self._counters()
        baseline = sum_counters(baselines)
        last_counters = baseline
        self._t0 = time.perf_counter()
        period_start = 0.0
        self._spawn_to(self.ramp.users)
        try:
            while self._tasks and self._fatal is None:
                now = self._now()
                if now >= options.duration:
                    break
                period_end = period_start + options.period
                await asyncio.sleep(
                    max(0.0, min(TICK_SECONDS, period_end - now, options.duration - now))
                )
                now = self._now()
                closed = now >= period_end - 1e-6 and now < options.duration
                if closed:
                    counters = sum_counters(await self._counters())
                    period = self._close_period(period_start, now, last_counters, counters)
                    last_counters, period_start = counters, now
                    ttfts = [r.ttft for r in period.requests if r.ok and r.ttft is not None]
                    self._spawn_to(self.ramp.decide(ttfts))
                if self.on_progress is not None:
                    self.on_progress(self._snapshot(), closed)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        end = min(self._now(), options.duration)
        self.result.elapsed = end
        # Requests cut off by the deadline never get recorded (their task was cancelled).
        finals = await self._settled_counters()
        counters = sum_counters(finals)
        if end > period_start:
            self._close_period(period_start, end + 1e-9, last_counters, counters)
        self.result.cache = counters.minus(baseline)
        self.result.endpoint_cache = {
            c.base_url: final.minus(first)
            for c, first, final in zip(self.clients, baselines, finals, strict=True)
        }
        if self.on_progress is not None:
            self.on_progress(self._snapshot(), True)
        if self._fatal is not None:
            raise ReplayInputError(self._fatal)
        return self.result
