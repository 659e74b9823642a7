"""The request stream the replay would send, as chunk keys in the order the server sees them.

Users are closed loops in virtual time, as in :mod:`atom_tier.replay.runner`: a user takes the
next session of the replay's seeded order (:class:`~atom_tier.replay.scheduler.SessionQueue`),
sends its requests one after another, waits the scaled and capped recorded think time
(:func:`~atom_tier.replay.scheduler.scaled_think`) before each, and ends a session at the first
request whose input is longer than the max context (kv-cache-tester's rule, the replay's
``_fits``; the output does not count). Sub-agents are sessions of their own. Every session
starts with the replay's warm prefix (kv-cache-tester's ``--warm-prefix-pct``): the chunks it
fills have one key in every session, as the canonical tokens are the same in every prompt.
The only timing the planner adds is how long a request takes: ``request_s`` seconds, the same
for every request (0 by default: think times alone set the order), or a time model's
answer (``respond``). Lengths are the replay's (:meth:`~atom_tier.replay.tokens.TokenMapper.shape`).

Keys: a trace block id stands for ``block_tokens`` tokens; a chunk of ``chunk_tokens`` tokens is
the same content wherever the ids up to its end are the same (within one trace scope and one
replay cycle), so its key is a chained hash of those ids, as vLLM's block hashes chain tokens.
Only the part of a prompt covered by ids can ever be hit again: the tail past the last id is
unique to each request.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from atom_tier.replay.scheduler import SessionQueue, scaled_think
from atom_tier.replay.tokens import TokenMapper, warm_prefix_trace_tokens
from atom_tier.replay.traces import ReplayInputError, Session

# Any vocabulary gives the same lengths; the planner never builds token ids.
_VOCAB = 1024


@dataclass(frozen=True)
class WorkloadOptions:
    """What the replay would be run with (the replay's option names and defaults)."""

    users: int = 4
    token_scale: float = 1.0
    think_scale: float = 1.0
    max_think: float | None = 60.0
    max_context: int | None = None
    max_output_tokens: int | None = None
    request_s: float = 0.0
    duration: float | None = None
    max_requests: int | None = None
    recycle: bool = False
    seed: int = 0
    warm_prefix_pct: float = 0.5

    def validate(self) -> None:
        if self.users < 1:
            raise ReplayInputError(f"users must be at least 1, got {self.users}")
        if not 0 < self.token_scale <= 1:
            raise ReplayInputError(f"token scale must be in (0, 1], got {self.token_scale}")
        if self.think_scale < 0 or self.request_s < 0:
            raise ReplayInputError("think scale and request seconds must not be negative")
        if self.max_context is not None and self.max_context < 2:
            raise ReplayInputError(f"max context must be at least 2, got {self.max_context}")
        if self.recycle and self.duration is None and self.max_requests is None:
            raise ReplayInputError("recycling needs a duration or a request count to stop")
        if not 0 <= self.warm_prefix_pct <= 1:
            raise ReplayInputError(
                f"warm prefix share must be in [0, 1], got {self.warm_prefix_pct}"
            )


@dataclass(frozen=True, eq=False)
class PlannedRequest:
    """One request of the stream. ``chain[:covered_chunks]`` are its shared chunk keys."""

    serial: int
    time: float
    user: int
    session_id: str
    cycle: int
    index: int
    input_tokens: int
    covered_tokens: int  # tokens covered by trace block ids (the rest is the unique tail)
    chain: list[int]
    covered_chunks: int
    # Key of the blocks of the previous request's last, partly covered chunk, when this
    # request starts with them: (chunk index, blocks, key). vLLM can hit them block by block.
    partial: tuple[int, int, int] | None
    own_partial: tuple[int, int, int] | None
    # The warm prefix's blocks past its last whole chunk, (chunk index, blocks, key), one key
    # in every session that keeps the warm prefix and whose prompt holds those blocks.
    warm_partial: tuple[int, int, int] | None = None
    output_tokens: int = 0


@dataclass(frozen=True)
class Workload:
    requests: tuple[PlannedRequest, ...]
    chunk_tokens: int
    block_tokens: int
    sessions_started: int
    sessions_truncated: int
    sessions_skipped: int
    end_time: float


class _Chain:
    """Chained hashes of one (session, cycle)'s block ids, and its chunk keys."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.ids = np.zeros(0, dtype=np.int64)
        self.hashes: list[int] = []
        self.chunks: list[int] = []
        self.last_partial: tuple[int, int, int] | None = None


class KeyBuilder:
    """Chunk keys of requests, reusing each session's previous request's prefix."""

    def __init__(self, *, chunk_tokens: int, block_tokens: int, id_tokens: int) -> None:
        self.chunk_tokens = chunk_tokens
        self.block_tokens = block_tokens
        self.id_tokens = id_tokens  # tokens per trace block id after scaling
        self._chains: dict[tuple[str, int], _Chain] = {}

    def _id_index(self, end_token: int) -> int:
        """Index of the id holding token ``end_token - 1``."""
        return math.ceil(end_token / self.id_tokens) - 1

    def keys(
        self, session: Session, cycle: int, hash_ids: Sequence[int]
    ) -> tuple[list[int], int, int, tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """(chain, covered chunks, covered tokens, partial hit candidate, own partial)."""
        name = (session.session_id, cycle)
        chain = self._chains.get(name)
        if chain is None:
            chain = self._chains[name] = _Chain(hash((session.hash_scope, cycle)))
        ids = (
            np.frombuffer(hash_ids, dtype=np.int64)
            if isinstance(hash_ids, array)
            else np.asarray(hash_ids, dtype=np.int64)
        )
        shared = min(len(ids), len(chain.ids))
        differ = np.flatnonzero(ids[:shared] != chain.ids[:shared])
        common = int(differ[0]) if differ.size else shared
        del chain.hashes[common:]
        value = chain.hashes[-1] if chain.hashes else chain.root
        for block_id in ids[common:].tolist():
            value = hash((value, block_id))
            chain.hashes.append(value)
        # Chunks whose ids all survive stay valid; the list is shared with earlier requests,
        # so a shorter prefix starts a new list rather than cutting the old one.
        common_tokens = common * self.id_tokens
        valid = common_tokens // self.chunk_tokens
        # The first chunk that changed still starts with the previous request's blocks up to
        # the first changed id: vLLM hashes and matches 128-token blocks, not chunks
        # (vllm/v1/core/kv_cache_utils.py ``hash_block_tokens``), so those blocks hit on the
        # device when the previous request's chunk (or its partial chunk) is still cached.
        shared_blocks = (common_tokens - valid * self.chunk_tokens) // self.block_tokens
        candidate = None
        last = chain.last_partial
        if shared_blocks and valid < len(chain.chunks):
            candidate = (valid, shared_blocks, chain.chunks[valid])
        elif last is not None and last[0] == valid and min(last[1], shared_blocks):
            candidate = (valid, min(last[1], shared_blocks), last[2])
        if valid < len(chain.chunks):
            chain.chunks = chain.chunks[:valid]
        covered_tokens = len(ids) * self.id_tokens
        covered_chunks = covered_tokens // self.chunk_tokens
        for index in range(len(chain.chunks), covered_chunks):
            end = (index + 1) * self.chunk_tokens
            chain.chunks.append(hash((chain.hashes[self._id_index(end)], index)))
        own = None
        blocks = (covered_tokens - covered_chunks * self.chunk_tokens) // self.block_tokens
        if blocks > 0:
            end = covered_chunks * self.chunk_tokens + blocks * self.block_tokens
            key = hash((chain.hashes[self._id_index(end)], covered_chunks, blocks, "partial"))
            own = (covered_chunks, blocks, key)
        chain.last_partial = own
        chain.ids = ids
        return chain.chunks, covered_chunks, covered_tokens, candidate, own


def build_workload(
    sessions: Sequence[Session],
    options: WorkloadOptions,
    *,
    chunk_tokens: int,
    block_tokens: int,
    respond: Callable[[PlannedRequest], float] | None = None,
) -> Workload:
    """The requests ``options.users`` closed-loop users send, in the order they arrive.

    ``respond``: called with each request as it is sent, in that order; returns when its
    answer comes back (a time model, :mod:`atom_tier.plan.latency`). Without it, each answer
    comes ``options.request_s`` after the request."""
    options.validate()
    if chunk_tokens < 1 or block_tokens < 1 or chunk_tokens % block_tokens:
        raise ReplayInputError(
            f"chunk tokens ({chunk_tokens}) must be a positive multiple of the KV block size "
            f"({block_tokens})"
        )
    mapper = TokenMapper(
        vocab_size=_VOCAB,
        token_scale=options.token_scale,
        seed=options.seed,
        max_output_tokens=options.max_output_tokens,
    )

    def fits(session: Session, index: int) -> bool:
        if options.max_context is None:
            return True
        return mapper.shape(session, index).input_tokens <= options.max_context

    fitting = [s for s in sessions if fits(s, 0)]
    if not fitting:
        raise ReplayInputError(
            f"every session's first request is longer than the max context "
            f"({options.max_context} tokens): lower the token scale or raise the max context"
        )
    mapper.use_warm_prefix(warm_prefix_trace_tokens(fitting, options.warm_prefix_pct))
    # Chunks wholly inside the warm prefix hold the same tokens in every session that keeps it.
    warm_keys = [
        hash(("warm-prefix", options.seed, index))
        for index in range(mapper.warm_prefix_tokens // chunk_tokens)
    ]
    # Its whole KV blocks past those chunks are the same blocks in every session too (vLLM
    # matches blocks; the DRAM tier, whole chunks only).
    warm_blocks = (mapper.warm_prefix_tokens - len(warm_keys) * chunk_tokens) // block_tokens
    warm_partial = (
        (len(warm_keys), warm_blocks, hash(("warm-prefix-blocks", options.seed, warm_blocks)))
        if warm_blocks
        else None
    )
    warm_end = len(warm_keys) * chunk_tokens + warm_blocks * block_tokens
    queue = SessionQueue(fitting, seed=options.seed, recycle=options.recycle)
    id_tokens = {mapper.block_tokens(s.block_size) for s in fitting}
    if len(id_tokens) != 1:
        raise ReplayInputError("the traces mix block sizes; plan one block size at a time")
    builder = KeyBuilder(
        chunk_tokens=chunk_tokens, block_tokens=block_tokens, id_tokens=id_tokens.pop()
    )
    # Each user: (time of its next request, user, session, cycle, index).
    ready: list[tuple[float, int]] = [(0.0, user) for user in range(options.users)]
    state: dict[int, tuple[Session, int, int]] = {}
    requests: list[PlannedRequest] = []
    truncated = started = 0
    end_time = 0.0
    while ready:
        now, user = heapq.heappop(ready)
        if options.duration is not None and now >= options.duration:
            continue
        if options.max_requests is not None and len(requests) >= options.max_requests:
            break
        current = state.get(user)
        if current is None:
            taken = queue.take()
            if taken is None:
                continue  # the user leaves: every session was handed out
            started += 1
            current = (taken[0], taken[1], 0)
        session, cycle, index = current
        if not fits(session, index):
            truncated += 1
            state.pop(user, None)
            heapq.heappush(ready, (now, user))
            continue
        shape = mapper.shape(session, index)
        request = session.requests[index]
        chain, chunks, covered, partial, own = builder.keys(session, cycle, request.hash_ids)
        warm = None
        if mapper.keeps_warm_prefix(session, index):
            shared = min(len(warm_keys), chunks)
            if shared:
                chain = warm_keys[:shared] + chain[shared:]  # a copy: the builder reuses it
            if shape.input_tokens >= warm_end:
                warm = warm_partial
        requests.append(
            PlannedRequest(
                serial=len(requests),
                time=now,
                user=user,
                session_id=session.session_id,
                cycle=cycle,
                index=index,
                input_tokens=shape.input_tokens,
                covered_tokens=min(covered, shape.input_tokens),
                chain=chain,
                covered_chunks=chunks,
                partial=partial,
                own_partial=own,
                warm_partial=warm,
                output_tokens=shape.output_tokens,
            )
        )
        end_time = max(end_time, now)
        done = now + options.request_s if respond is None else respond(requests[-1])
        if index + 1 < len(session.requests):
            state[user] = (session, cycle, index + 1)
            think = scaled_think(
                session.think_before(index + 1), options.think_scale, options.max_think
            )
            heapq.heappush(ready, (done + think, user))
        else:
            state.pop(user, None)
            heapq.heappush(ready, (done, user))
    if not requests:
        raise ReplayInputError("the workload holds no request (duration or request count 0?)")
    return Workload(
        requests=tuple(requests),
        chunk_tokens=chunk_tokens,
        block_tokens=block_tokens,
        sessions_started=started,
        sessions_truncated=truncated,
        sessions_skipped=len(sessions) - len(fitting),
        end_time=end_time,
    )
