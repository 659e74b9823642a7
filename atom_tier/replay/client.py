"""Streaming ``/v1/completions`` client with token-id prompts, measuring time to first token.

Prompts are lists of token ids so that the server sees exactly the tokens the trace mapping
built (no tokenizer in between). ``ignore_eos`` makes every request generate the output length
the trace recorded, as in kv-cache-tester, so runs with different servers do equal work.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from atom_tier.replay.metrics import CacheCounters
from atom_tier.replay.traces import ReplayInputError

_PROBE_TOP = 1 << 24  # larger than any vocabulary served today


_REQUEST_ID = re.compile(r"^(?:cmpl-)?(?P<session>.+):(?P<cycle>\d+):(?P<index>\d+)(?:-.*)?$")


def replay_request_id(session_id: str, cycle: int, index: int) -> str:
    """The ``X-Request-Id`` of a session's ``index``-th request in recycling ``cycle``."""
    return f"{session_id}:{cycle}:{index}"


def parse_replay_request_id(request_id: str) -> tuple[str, int, int] | None:
    """(session, cycle, index) from a vLLM request id built from :func:`replay_request_id`
    (vLLM adds ``cmpl-`` before it and ``-<prompt>-<random>`` after), or None."""
    match = _REQUEST_ID.match(request_id)
    if match is None:
        return None
    return match["session"], int(match["cycle"]), int(match["index"])


@dataclass(frozen=True)
class ServerInfo:
    base_url: str
    model: str
    max_model_len: int | None
    root: str | None


@dataclass(frozen=True)
class Completion:
    """What one streamed request gave: times in seconds from sending it; error or None."""

    ttft: float | None
    latency: float
    output_tokens: int
    prompt_tokens: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft is not None


def _error_text(status: int, body: bytes) -> str:
    text = body.decode(errors="replace").strip()
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            inner = data.get("error", data)
            text = str(inner.get("message", inner) if isinstance(inner, dict) else inner)
    except json.JSONDecodeError:
        pass
    return f"HTTP {status}: {text[:300]}"


class ReplayClient:
    """One HTTP connection pool to the server for a whole replay run."""

    def __init__(self, base_url: str, *, timeout: float = 600.0, connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    async def __aenter__(self) -> ReplayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def _get(self, path: str) -> httpx.Response:
        try:
            return await self._http.get(path)
        except httpx.HTTPError as error:
            raise ReplayInputError(
                f"server {self.base_url} is unreachable ({type(error).__name__}: {error}); "
                "is it running, and is --endpoint (--url) right?"
            ) from None

    async def server_info(self, model: str | None = None) -> ServerInfo:
        """The served model (``model`` or the first one listed) and its context length."""
        reply = await self._get("/v1/models")
        if reply.status_code != 200:
            raise ReplayInputError(
                f"server {self.base_url}: GET /v1/models answered "
                f"{_error_text(reply.status_code, reply.content)}; is it an OpenAI-compatible "
                "server?"
            )
        try:
            entries = [e for e in reply.json()["data"] if isinstance(e, dict) and "id" in e]
        except (ValueError, KeyError, TypeError):
            entries = []
        if not entries:
            raise ReplayInputError(f"server {self.base_url}: GET /v1/models lists no model")
        chosen = entries[0]
        if model is not None:
            named = [e for e in entries if e["id"] == model]
            if not named:
                listed = ", ".join(str(e["id"]) for e in entries)
                raise ReplayInputError(
                    f"server {self.base_url} does not serve model {model!r} (it serves {listed})"
                )
            chosen = named[0]
        max_len = chosen.get("max_model_len")
        return ServerInfo(
            base_url=self.base_url,
            model=str(chosen["id"]),
            max_model_len=int(max_len) if isinstance(max_len, int) else None,
            root=str(chosen["root"]) if chosen.get("root") else None,
        )

    async def vocab_size(self, info: ServerInfo) -> int:
        """Token ids the server accepts: from the model's config.json when it is readable
        here, else by bisection with one-token completions (about 24 tiny requests)."""
        if info.root:
            config = Path(info.root) / "config.json"
            try:
                data = json.loads(config.read_text())
                text_config = data.get("text_config") or {}
                size = data.get("vocab_size") or text_config.get("vocab_size")
                if isinstance(size, int) and size > 1:
                    return size
            except (OSError, ValueError, AttributeError):
                pass
        return await self._probe_vocab(info.model)

    async def _token_known(self, model: str, token_id: int) -> bool:
        # A one-token completion: the server validates prompt ids against its vocabulary
        # (/detokenize does not: vLLM answers 200 for any id there).
        payload = {"model": model, "prompt": [token_id], "max_tokens": 1, "temperature": 0.0}
        try:
            reply = await self._http.post("/v1/completions", json=payload)
        except httpx.HTTPError as error:
            raise ReplayInputError(f"server {self.base_url} is unreachable: {error}") from None
        if reply.status_code not in (200, 400):
            raise ReplayInputError(
                f"server {self.base_url}: probing the vocabulary got "
                f"{_error_text(reply.status_code, reply.content)}; pass --vocab-size"
            )
        return reply.status_code == 200

    async def _probe_vocab(self, model: str) -> int:
        if not await self._token_known(model, 0):
            raise ReplayInputError(
                f"server {self.base_url} rejects a prompt of token id 0: pass --vocab-size"
            )
        low, high = 0, _PROBE_TOP  # low is known, high is not
        while high - low > 1:
            middle = (low + high) // 2
            if await self._token_known(model, middle):
                low = middle
            else:
                high = middle
        return low + 1

    async def cache_counters(self) -> CacheCounters:
        """The server's cache counters now; unavailable (not an error) without /metrics."""
        try:
            reply = await self._http.get("/metrics")
        except httpx.HTTPError:
            return CacheCounters()
        if reply.status_code != 200:
            return CacheCounters()
        return CacheCounters.from_text(reply.text)

    async def complete(
        self, model: str, prompt: list[int], max_tokens: int, request_id: str | None = None
    ) -> Completion:
        """Send one streamed completion; never raises for a failed request. ``request_id``
        goes in ``X-Request-Id``, which vLLM makes part of its own request id, so the
        server's logs and connector name the replay's request."""
        payload: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        start = time.perf_counter()
        ttft: float | None = None
        chunks = 0
        usage: dict[str, Any] = {}
        headers = {"X-Request-Id": request_id} if request_id else None
        try:
            async with self._http.stream(
                "POST", "/v1/completions", json=payload, headers=headers
            ) as reply:
                if reply.status_code != 200:
                    body = await reply.aread()
                    return Completion(
                        None,
                        time.perf_counter() - start,
                        0,
                        None,
                        _error_text(reply.status_code, body),
                    )
                async for line in reply.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("choices"):
                        if ttft is None:
                            ttft = time.perf_counter() - start
                        chunks += 1
                    if chunk.get("usage"):
                        usage = chunk["usage"]
        except (httpx.HTTPError, json.JSONDecodeError) as error:
            message = f"{type(error).__name__}: {error}".strip()
            return Completion(ttft, time.perf_counter() - start, chunks, None, message)
        latency = time.perf_counter() - start
        if ttft is None:
            return Completion(None, latency, 0, None, "stream ended without a token")
        return Completion(
            ttft=ttft,
            latency=latency,
            output_tokens=int(usage.get("completion_tokens", chunks)),
            prompt_tokens=usage.get("prompt_tokens"),
        )
