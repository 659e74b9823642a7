"""Trace block ids → token ids, so the server sees exactly the prefix reuse a trace recorded.

Every block id maps to one block of token ids drawn from a hash of (seed, scope, cycle, id):
the same id in the same trace always gives the same tokens, different ids give unrelated tokens.
A request's prompt is its blocks in order plus a tail for the input tokens past the last full
block (unique to that request: the trace records no id for a partial block).

``token_scale`` shrinks every length (block size, tail, output) for small machines: at 1/32 a
64-token trace block becomes 2 tokens and a 100K-token context about 3K tokens, with the same
sharing structure. ``cycle`` separates a session replayed again after recycling: it is a new
conversation of the same shape, not a repeat of the old one's content.

The warm prefix models what kv-cache-tester's ``--warm-prefix-pct`` does: real agentic traffic
shares its tool definitions and system prompt across conversations, while the traces' block
ids are scoped to one conversation. Every session's first ``warm_prefix_tokens`` tokens are one
canonical token sequence shared by all sessions and cycles; a later request keeps it as long as
it still starts with the blocks it replaced (a compaction that drops them drops it too).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from atom_tier.replay.traces import ReplayInputError, Session, TraceRequest

# Tokenizers usually keep special tokens at the lowest ids; skipping the lowest 1/64 of the
# vocabulary keeps prompts to ordinary tokens on the models we know (and costs nothing).
_LOW_ID_FRACTION = 64
_BLOCK_CACHE_SIZE = 16384


@dataclass(frozen=True)
class PromptShape:
    """Lengths of one scaled request: its blocks, its tail and the tokens to generate."""

    blocks: int
    block_tokens: int
    tail_tokens: int
    output_tokens: int

    @property
    def input_tokens(self) -> int:
        return max(1, self.blocks * self.block_tokens + self.tail_tokens)


def warm_prefix_trace_tokens(sessions: Sequence[Session], share: float) -> int:
    """kv-cache-tester's warm prefix length in trace tokens: ``share`` of the largest
    ``tool_tokens + system_tokens`` among the traces (sub-agents' own entries not counted)."""
    if not 0 <= share <= 1:
        raise ReplayInputError(f"warm prefix share must be in [0, 1], got {share}")
    largest = max((s.prefix_tokens for s in sessions if not s.is_subagent), default=0)
    return int(share * largest)


def check_scaling(token_scale: float, max_output_tokens: int | None) -> None:
    """Refuse a token scale outside (0, 1] or an output cap below one token."""
    if not 0 < token_scale <= 1:
        raise ReplayInputError(f"token scale must be in (0, 1], got {token_scale}")
    if max_output_tokens is not None and max_output_tokens < 1:
        raise ReplayInputError(f"max output tokens must be at least 1, got {max_output_tokens}")


class TokenMapper:
    """Deterministic token blocks for trace block ids, within a vocabulary of ``vocab_size``."""

    def __init__(
        self,
        *,
        vocab_size: int,
        token_scale: float = 1.0,
        seed: int = 0,
        max_output_tokens: int | None = None,
    ) -> None:
        if vocab_size < 2:
            raise ReplayInputError(f"vocabulary size must be at least 2, got {vocab_size}")
        if not 0 < token_scale <= 1:
            raise ReplayInputError(f"token scale must be in (0, 1], got {token_scale}")
        if max_output_tokens is not None and max_output_tokens < 1:
            raise ReplayInputError(f"max output tokens must be at least 1, got {max_output_tokens}")
        self.vocab_size = vocab_size
        self.token_scale = token_scale
        self.seed = seed
        self.max_output_tokens = max_output_tokens
        self.low_id = vocab_size // _LOW_ID_FRACTION
        self._span = vocab_size - self.low_id
        self._blocks: OrderedDict[tuple[str, int, int, int], tuple[int, ...]] = OrderedDict()
        self.warm_prefix_tokens = 0
        self._canonical: tuple[int, ...] = ()

    def use_warm_prefix(self, trace_tokens: int) -> None:
        """Start every session with a canonical prefix of ``trace_tokens`` (before scaling;
        0 turns it off). The sequence depends on the seed only: all sessions share it."""
        if trace_tokens < 0:
            raise ReplayInputError(f"warm prefix must not be negative, got {trace_tokens}")
        self.warm_prefix_tokens = round(trace_tokens * self.token_scale)
        self._canonical = self._draw(f"canonical|{self.seed}".encode(), self.warm_prefix_tokens)

    def block_tokens(self, block_size: int) -> int:
        """Tokens per trace block after scaling (at least one)."""
        return max(1, round(block_size * self.token_scale))

    def shape(self, session: Session, index: int) -> PromptShape:
        """Scaled lengths of request ``index`` of ``session``, without building the prompt."""
        request = session.requests[index]
        block_tokens = self.block_tokens(session.block_size)
        # Input past the last full block; a trace that records more blocks than its input
        # covers (never seen in the real ones) gets no tail rather than a negative one.
        tail = max(0, request.input_tokens - len(request.hash_ids) * session.block_size)
        output = max(1, round(request.output_tokens * self.token_scale))
        if self.max_output_tokens is not None:
            output = min(output, self.max_output_tokens)
        return PromptShape(
            blocks=len(request.hash_ids),
            block_tokens=block_tokens,
            tail_tokens=round(tail * self.token_scale),
            output_tokens=output,
        )

    def _draw(self, key: bytes, count: int) -> tuple[int, ...]:
        raw = hashlib.shake_128(key).digest(4 * count)
        low, span = self.low_id, self._span
        return tuple(low + value % span for value in struct.unpack(f"<{count}I", raw))

    def block(self, scope: str, cycle: int, hash_id: int, count: int) -> tuple[int, ...]:
        """The ``count`` token ids of block ``hash_id`` in ``scope`` (cached, LRU)."""
        key = (scope, cycle, hash_id, count)
        found = self._blocks.get(key)
        if found is not None:
            self._blocks.move_to_end(key)
            return found
        tokens = self._draw(f"block|{self.seed}|{scope}|{cycle}|{hash_id}".encode(), count)
        self._blocks[key] = tokens
        if len(self._blocks) > _BLOCK_CACHE_SIZE:
            self._blocks.popitem(last=False)
        return tokens

    def keeps_warm_prefix(self, session: Session, index: int) -> bool:
        """Whether request ``index`` still starts with the blocks the canonical prefix replaced
        in the session's first request (always true for the first request itself)."""
        if not self.warm_prefix_tokens:
            return False
        first = session.requests[0].hash_ids
        spanned = min(
            len(first), math.ceil(self.warm_prefix_tokens / self.block_tokens(session.block_size))
        )
        ids = session.requests[index].hash_ids
        return len(ids) >= spanned and all(ids[j] == first[j] for j in range(spanned))

    def prompt(self, session: Session, index: int, *, cycle: int = 0) -> list[int]:
        """Token ids of request ``index`` of ``session`` (replay ``cycle`` of that session)."""
        shape = self.shape(session, index)
        request: TraceRequest = session.requests[index]
        tokens: list[int] = []
        for hash_id in request.hash_ids:
            tokens.extend(self.block(session.hash_scope, cycle, hash_id, shape.block_tokens))
        tail = shape.tail_tokens if tokens else max(1, shape.tail_tokens)
        if tail:
            key = f"tail|{self.seed}|{session.session_id}|{cycle}|{index}".encode()
            tokens.extend(self._draw(key, tail))
        if self.keeps_warm_prefix(session, index):
            shared = min(len(tokens), self.warm_prefix_tokens)
            tokens[:shared] = self._canonical[:shared]
        return tokens
