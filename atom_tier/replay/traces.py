"""Load kv-cache-tester traces (a folder of ``.json`` / ``.json.gz``) into replayable sessions.

A trace is one agentic conversation; a ``type: "subagent"`` entry inside it holds the nested
requests of a sub-agent, whose times restart at 0 and whose blocks are its own. Each sub-agent is
replayed as its own session (its own user, its own history), as kv-cache-tester does, so the
parent's list keeps only its own requests.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACE_SUFFIXES = (".json", ".json.gz")
DEFAULT_BLOCK_SIZE = 64


class ReplayInputError(ValueError):
    """Bad input to replay (folder, trace file, server, option); the message says which."""


@dataclass(frozen=True, eq=False)
class TraceRequest:
    """One recorded request: token counts, block ids of its input, and its timing."""

    t: float
    kind: str
    input_tokens: int
    output_tokens: int
    # An int64 array, not a tuple: the 355 real traces hold ~49M ids (1.7 GB as tuples).
    hash_ids: Sequence[int]
    think_time: float | None = None
    api_time: float | None = None


@dataclass(frozen=True, eq=False)
class Session:
    """A request sequence replayed by one user: a trace's own requests, or one sub-agent's."""

    session_id: str
    trace_id: str
    # Block ids are only meaningful inside one trace when the scope is "local"; with a
    # "global" scope equal ids in different traces are the same content.
    hash_scope: str
    block_size: int
    requests: tuple[TraceRequest, ...]
    source: str
    # The trace's (or the sub-agent entry's) ``tool_tokens + system_tokens``: the length of
    # the tool definitions and system prompt at the start of the conversation.
    prefix_tokens: int = 0

    @property
    def is_subagent(self) -> bool:
        return self.session_id != self.trace_id

    def think_before(self, index: int) -> float:
        """Recorded client delay before request ``index`` (0 for the first request).

        ``think_time`` when the trace has it; older traces only have ``t``, and then the
        gap between the two start times (which includes the recorded server time) is used.
        """
        if index <= 0:
            return 0.0
        request = self.requests[index]
        if request.think_time is not None:
            return max(0.0, request.think_time)
        return max(0.0, request.t - self.requests[index - 1].t)


@dataclass(frozen=True)
class TraceSet:
    """Every session of every trace file in a folder, in file-name order."""

    folder: Path
    files: int
    sessions: tuple[Session, ...]

    @property
    def trace_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.trace_id for s in self.sessions))

    @property
    def request_count(self) -> int:
        return sum(len(s.requests) for s in self.sessions)


def prefix_tokens_of(entry: dict[str, Any], where: str) -> int:
    """``tool_tokens + system_tokens`` of a trace or sub-agent entry (0 when absent)."""
    total = 0
    for key in ("tool_tokens", "system_tokens"):
        value = entry.get(key)
        if value is not None:
            total += int(_number(value, key, where, integer=True))
    return total


def trace_files(folder: Path) -> list[Path]:
    """The trace files of ``folder``, sorted by name; raises when there is none."""
    folder = Path(folder)
    if not folder.exists():
        raise ReplayInputError(f"trace folder {folder} does not exist")
    if not folder.is_dir():
        raise ReplayInputError(f"trace folder {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
    if not files:
        raise ReplayInputError(f"trace folder {folder} holds no trace files (*.json or *.json.gz)")
    return files


def read_trace_file(path: Path) -> dict[str, Any]:
    """Parse one trace file (gzip-compressed or not) into its top-level object."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        data = json.loads(raw)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReplayInputError(f"trace file {path} cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise ReplayInputError(f"trace file {path}: top level is not a JSON object")
    return data


def _number(value: Any, what: str, where: str, *, integer: bool = False) -> float:
    valid = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not valid or isinstance(value, bool) or value < 0:
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise ReplayInputError(f"{where}: '{what}' must be {kind}, got {value!r}")
    return float(value)


def _optional_number(entry: dict[str, Any], key: str, where: str) -> float | None:
    value = entry.get(key)
    return None if value is None else _number(value, key, where)


def parse_request(entry: dict[str, Any], where: str) -> TraceRequest:
    """Validate one non-sub-agent request entry."""
    for key in ("in", "out", "hash_ids"):
        if key not in entry:
            raise ReplayInputError(f"{where}: missing '{key}'")
    hash_ids = entry["hash_ids"]
    try:
        if not isinstance(hash_ids, list):
            raise TypeError
        ids = array("q", hash_ids)
    except (TypeError, OverflowError):
        raise ReplayInputError(f"{where}: 'hash_ids' must be a list of integers") from None
    return TraceRequest(
        t=_number(entry.get("t", 0.0), "t", where),
        kind=str(entry.get("type", "n")),
        input_tokens=int(_number(entry["in"], "in", where, integer=True)),
        output_tokens=int(_number(entry["out"], "out", where, integer=True)),
        hash_ids=ids,
        think_time=_optional_number(entry, "think_time", where),
        api_time=_optional_number(entry, "api_time", where),
    )


def _flatten(
    entries: Any,
    *,
    session_id: str,
    trace_id: str,
    scope: str,
    block_size: int,
    source: str,
    prefix_tokens: int,
    out: list[Session],
) -> None:
    """Append the session ``session_id`` and, after it, each nested sub-agent's session."""
    if not isinstance(entries, list):
        raise ReplayInputError(f"{source}: 'requests' of {session_id} must be a list")
    own: list[TraceRequest] = []
    children: list[tuple[str, Any, int]] = []
    for index, entry in enumerate(entries):
        where = f"{source}: request {index} of {session_id}"
        if not isinstance(entry, dict):
            raise ReplayInputError(f"{where} is not a JSON object")
        if entry.get("type") == "subagent":
            name = str(entry.get("agent_id") or f"subagent_{len(children) + 1}")
            if "requests" not in entry:
                raise ReplayInputError(f"{where}: sub-agent entry has no 'requests'")
            prefix = prefix_tokens_of(entry, where)
            children.append((f"{session_id}/{name}", entry["requests"], prefix))
        else:
            own.append(parse_request(entry, where))
    if own:
        out.append(
            Session(session_id, trace_id, scope, block_size, tuple(own), source, prefix_tokens)
        )
    for child_id, child_entries, child_prefix in children:
        _flatten(
            child_entries,
            session_id=child_id,
            trace_id=trace_id,
            scope=scope,
            block_size=block_size,
            source=source,
            prefix_tokens=child_prefix,
            out=out,
        )


def sessions_of(data: dict[str, Any], source: str) -> list[Session]:
    """The sessions of one parsed trace: its own requests first, then each sub-agent."""
    if "requests" not in data:
        raise ReplayInputError(f"trace file {source}: no 'requests' list")
    trace_id = str(data.get("id") or Path(source).name.split(".")[0])
    block_size = data.get("block_size", DEFAULT_BLOCK_SIZE)
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise ReplayInputError(
            f"trace file {source}: 'block_size' must be a positive integer, got {block_size!r}"
        )
    scope = trace_id if data.get("hash_id_scope", "local") != "global" else "global"
    sessions: list[Session] = []
    _flatten(
        data["requests"],
        session_id=trace_id,
        trace_id=trace_id,
        scope=scope,
        block_size=block_size,
        source=source,
        prefix_tokens=prefix_tokens_of(data, f"trace file {source}"),
        out=sessions,
    )
    return sessions


def pick_files(files: list[Path], limit: int | None, seed: int) -> list[Path]:
    """``limit`` files drawn with ``seed`` (the same ones every run), kept in name order."""
    if limit is None or limit >= len(files):
        return files
    if limit <= 0:
        raise ReplayInputError(f"trace limit must be positive, got {limit}")
    chosen = set(random.Random(seed).sample(range(len(files)), limit))
    return [path for index, path in enumerate(files) if index in chosen]


def load_traces(folder: Path, *, limit: int | None = None, seed: int = 0) -> TraceSet:
    """Every session of the traces in ``folder`` (or of ``limit`` of them drawn with ``seed``).

    The first bad file stops loading with an error naming it.
    """
    files = pick_files(trace_files(folder), limit, seed)
    sessions: list[Session] = []
    seen: dict[str, Path] = {}
    for path in files:
        found = sessions_of(read_trace_file(path), str(path))
        for session in found:
            if session.session_id in seen:
                raise ReplayInputError(
                    f"trace file {path}: session id {session.session_id!r} "
                    f"already used by {seen[session.session_id]}"
                )
            seen[session.session_id] = path
        sessions.extend(found)
    if not sessions:
        raise ReplayInputError(f"trace folder {folder}: the trace files hold no requests")
    return TraceSet(folder=Path(folder), files=len(files), sessions=tuple(sessions))
