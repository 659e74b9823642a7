"""The shared tier's Valkey/Redis client: redis-py (hiredis parser when installed), one server
or a cluster, every call pipelined and answered per key. For a standalone server over plain
TCP or a unix socket, the data path (SET NX, GET) runs on raw sockets instead
(:mod:`resp_wire`): values go out from their parts and come back into the caller's buffers.

A call either answers for every key or raises :class:`SharedUnavailable` (connection refused,
timeout, authentication, cluster down): the store feeds that to its circuit breaker. Per-key
replies that are errors (an OOM reply from a full server with ``noeviction``) come back in
place, not raised. Cluster redirections (MOVED, ASK) are followed by redis-py itself.
Why redis-py: docs/architecture.md, "Shared tier: server and client library".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry

from atom_tier.tiers.resp_wire import Buffer, Endpoint, ReplyError, WirePool
from atom_tier.tiers.shared_url import SharedTarget

# Errors that mean "the server (or cluster) cannot answer now", as opposed to a reply.
_UNAVAILABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterUnreachableError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.MaxConnectionsError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.NoPermissionError,
)


class SharedUnavailable(Exception):
    """The shared tier's server did not answer; ``auth`` when it refused the credentials."""

    def __init__(self, message: str, auth: bool = False) -> None:
        super().__init__(message)
        self.auth = auth


class ServerFull(Exception):
    """An OOM reply: the server is at maxmemory and its policy (noeviction) refuses writes."""


@dataclass(frozen=True)
class ServerFacts:
    """What the server says about itself (per node for a cluster: the first node's)."""

    product: str  # "valkey" or "redis"
    version: str
    maxmemory: int
    policy: str
    nodes: int
    extra: dict[str, Any] = field(default_factory=dict)


# What redis-py's parse_url may return for a URL the lean data path serves as redis-py would:
# any other query option (protocol=3, timeouts, client_name, ...) keeps the data on redis-py.
_LEAN_URL_OPTIONS = {"host", "port", "path", "username", "password", "db", "connection_class"}


def _refuses_credentials(reply: str) -> bool:
    """Whether an error reply's text refuses the credentials (or lacks them)."""
    return reply.startswith(("WRONGPASS", "NOAUTH", "NOPERM")) or "AUTH" in reply[:12]


def lean_endpoint(target: SharedTarget) -> Endpoint | None:
    """Where the lean data path connects, for a standalone ``redis://`` or ``unix://``
    target with no options but the db; None for TLS, clusters and other options."""
    url = target.urls[0]
    if target.cluster or url.split("://", 1)[0].lower() not in ("redis", "unix"):
        return None
    options = parse_url(url)
    if set(options) - _LEAN_URL_OPTIONS:
        return None
    return Endpoint(
        host=options.get("host", "localhost"),
        port=int(options.get("port", 6379)),
        path=options.get("path"),
        username=options.get("username"),
        password=options.get("password"),
        db=int(options.get("db", 0)),
    )


def server_warnings(facts: ServerFacts) -> list[str]:
    """What in the server's memory settings would hurt the tier, each with its fix."""
    found = []
    if facts.policy == "noeviction":
        found.append(
            "maxmemory-policy is noeviction: once full the server refuses every new chunk; "
            "fix: `CONFIG SET maxmemory-policy allkeys-lru` (or allkeys-lfu) on every node"
        )
    if facts.maxmemory == 0:
        found.append(
            "maxmemory is 0 (no cap): the server grows until the host runs out of memory; "
            "fix: `CONFIG SET maxmemory <bytes>` on every node"
        )
    return found


def _unavailable(error: Exception) -> SharedUnavailable:
    auth = isinstance(error, redis.AuthenticationError | redis.exceptions.AuthorizationError)
    if not auth and isinstance(error, redis.ResponseError):
        text = str(error)
        auth = _refuses_credentials(text)
    return SharedUnavailable(f"{type(error).__name__}: {error}", auth=auth)


class SharedClient:
    """Thread-safe (redis-py's connection pool, and the lean path's :class:`WirePool`); calls
    block up to ``timeout_s`` each (for the lean path: each connect, send and receive)."""

    def __init__(self, target: SharedTarget, timeout_s: float, max_connections: int = 16) -> None:
        self.target = target
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "health_check_interval": 0,
            # redis-py's default retries cost 2-4 s per command with a cluster node down
            # (docs/benchmarks.md); the breaker is the retry policy here.
            "retry": Retry(NoBackoff(), 0),
        }
        self._client: redis.Redis | RedisCluster
        if target.cluster:
            nodes = [
                ClusterNode(urlsplit(u).hostname, urlsplit(u).port or 6379) for u in target.urls
            ]
            self._client = RedisCluster(
                url=target.urls[0],
                startup_nodes=nodes,
                max_connections=max_connections,
                **options,
            )
        else:
            self._client = redis.Redis.from_url(
                target.urls[0], max_connections=max_connections, **options
            )
        endpoint = lean_endpoint(target)
        self.lean = endpoint is not None
        self._wire = None if endpoint is None else WirePool(endpoint, timeout_s, max_connections)

    def _run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` in one pipeline; per command its reply or its error reply."""
        if not commands:
            return []
        try:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except _UNAVAILABLE as error:
            raise _unavailable(error) from None
        except redis.ResponseError as error:  # the whole pipeline refused (AUTH, ...)
            raise _unavailable(error) from None
        for reply in replies:
            if isinstance(reply, _UNAVAILABLE):
                raise _unavailable(reply)
            if isinstance(reply, redis.ResponseError) and _unavailable(reply).auth:
                raise _unavailable(reply)
        return replies

    def ping(self) -> None:
        try:
            self._client.ping()
        except (*_UNAVAILABLE, redis.ResponseError) as error:
            raise _unavailable(error) from None

    def exists(self, keys: Sequence[str]) -> list[bool]:
        if self._wire is not None:  # 15 us a key against redis-py's 130 here (4-key batches)
            replies = self._wire_replies(self._wire.exists, [key.encode() for key in keys])
            return [reply is True for reply in replies]
        return [reply == 1 for reply in self._run([("EXISTS", key) for key in keys])]

    def get(self, keys: Sequence[str]) -> list[bytes | Exception | None]:
        return self._run([("GET", key) for key in keys])

    def get_into(
        self, items: Sequence[tuple[str, Sequence[memoryview]]]
    ) -> list[bool | bytes | Exception | None]:
        """GET each key into its buffers (header block, payload, MAC), pipelined.

        Per key: True when the value had exactly the buffers' total length and now fills
        them (lean path); the value as bytes otherwise (redis-py always answers so); None
        when the key is gone; or an error reply. Filled buffers are not verified yet.
        """
        if self._wire is None:
            return [*self.get([key for key, _ in items])]
        return self._wire_replies(self._wire.get_into, [(k.encode(), b) for k, b in items])

    def set_absent(self, items: Sequence[tuple[str, Sequence[Buffer]]]) -> list[bool | Exception]:
        """SET NX each value, given as its parts: True stored, False already there,
        ServerFull, or another error reply.

        Lean path: one pipeline, each value's parts sent as they are (``sendmsg``). redis-py:
        one command per value, not a pipeline: with values of 256 KiB and more, redis-py sent
        pipelined SETs slower than single ones (752 against 1084 MB/s, 4 threads, 256 KiB).
        Values go as memoryviews, which redis-py sends as they are; bytes would be copied
        through hiredis.pack_command (~300 MB/s here; docs/benchmarks.md).
        """
        if self._wire is not None:
            return self._wire_replies(self._wire.set_absent, [(k.encode(), v) for k, v in items])
        replies: list[bool | Exception] = []
        for key, parts in items:
            value = parts[0] if len(parts) == 1 else b"".join(parts)
            try:
                replies.append(bool(self._client.set(key, memoryview(value), nx=True)))
            except redis.exceptions.OutOfMemoryError as error:
                replies.append(ServerFull(str(error)))
            except _UNAVAILABLE as error:
                raise _unavailable(error) from None
            except redis.ResponseError as error:
                if _unavailable(error).auth:
                    raise _unavailable(error) from None
                replies.append(error)
        return replies

    def _wire_replies(
        self, call: Callable[[list[Any]], Sequence[object]], items: list[Any]
    ) -> list[Any]:
        """Run a lean call: a transport failure or a refused AUTH/SELECT is SharedUnavailable
        (the connection was closed, never reused mid-reply); OOM replies become ServerFull;
        an authentication error reply raises; other error replies stay in place."""
        if not items:
            return []
        try:
            replies = call(items)
        except ReplyError as error:  # AUTH or SELECT on connect
            raise SharedUnavailable(
                f"ReplyError: {error}", auth=_refuses_credentials(str(error))
            ) from None
        except OSError as error:  # refused, reset, timed out (TimeoutError), not RESP
            raise SharedUnavailable(f"{type(error).__name__}: {error}") from None
        out: list[object] = []
        for reply in replies:
            if isinstance(reply, ReplyError):
                if _refuses_credentials(str(reply)):
                    raise SharedUnavailable(f"ReplyError: {reply}", auth=True)
                if reply.code == "OOM":
                    reply = ServerFull(str(reply))
            out.append(reply)
        return out

    def delete(self, keys: Sequence[str]) -> None:
        self._run([("DEL", key) for key in keys])

    def server_facts(self) -> ServerFacts:
        info: dict[str, Any]
        try:
            nodes = 1
            if isinstance(self._client, RedisCluster):
                per_node: dict[str, dict[str, Any]] = self._client.info(
                    target_nodes=RedisCluster.PRIMARIES
                )
                nodes = len(per_node)
                info = next(iter(per_node.values()), {})
            else:
                info = self._client.info()
        except (*_UNAVAILABLE, redis.ResponseError) as error:
            raise _unavailable(error) from None
        product = "valkey" if "valkey_version" in info else "redis"
        return ServerFacts(
            product=product,
            version=str(info.get(f"{product}_version", info.get("redis_version", "?"))),
            maxmemory=int(info.get("maxmemory", 0)),
            policy=str(info.get("maxmemory_policy", "?")),
            nodes=nodes,
        )

    def close(self) -> None:
        self._client.close()
        if self._wire is not None:
            self._wire.close()
