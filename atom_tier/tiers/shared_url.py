"""The shared tier's server address: parsed once, checked up front, printed without secrets.

Accepted (``ATOM_TIER_SHARED_URL``, or LMCache's ``LMCACHE_REMOTE_URL``):

* ``redis://[user:password@]host:port[/db]``, ``rediss://...`` (TLS; redis-py's ``ssl_*`` query
  parameters name the CA and client certificate), ``unix:///path/to/socket[?db=N]``;
  ``valkey://`` and ``valkeys://`` are read as ``redis://`` and ``rediss://``;
* a Valkey/Redis Cluster: ``redis+cluster://host:port`` (any node; the others are discovered),
  or a comma-separated list of node URLs or ``host:port`` pairs (credentials and TLS from the
  first one).

Nothing here connects. LMCache's other remote schemes (``lm://``, ``mooncakestore://``, ...)
name servers this tier cannot talk to and are refused with the variable named.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_ALIASES = {"valkey": "redis", "valkeys": "rediss"}
_SINGLE = {"redis", "rediss", "unix"}
_CLUSTER = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Query parameters whose values are secrets or name secret material.
_SECRET_QUERY = ("pass", "secret", "token", "key", "cert")


class SharedUrlError(ValueError):
    """A shared-tier URL this tier cannot use; the message names the variable."""


@dataclass(frozen=True)
class SharedTarget:
    """Where the shared tier lives: one server, or the seed nodes of a cluster."""

    cluster: bool
    urls: tuple[str, ...]  # redis-py URLs (credentials included): never log these

    @property
    def display(self) -> str:
        """The address without credentials, for logs and findings."""
        shown = ",".join(redact(url) for url in self.urls)
        return f"cluster {shown}" if self.cluster else shown


def redact(url: str) -> str:
    """``url`` with its password (and any secret query value) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if user else f"***@{host}"
    query = [
        (name, "***" if any(word in name.lower() for word in _SECRET_QUERY) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*/"), ""))


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _normalise(url: str, variable: str, default_scheme: str) -> str:
    """One node's URL in redis-py's schemes; ``host:port`` gets ``default_scheme``."""
    url = url.strip()
    scheme = _scheme(url)
    if not scheme:
        url, scheme = f"{default_scheme}://{url}", default_scheme
    scheme = _ALIASES.get(scheme, scheme)
    if scheme not in _SINGLE:
        raise SharedUrlError(
            f"{variable}={redact(url)!r}: scheme {scheme!r} is not a Valkey/Redis server "
            "(use redis://, rediss://, unix://, redis+cluster:// or a comma-separated node list)"
        )
    rest = url.split("://", 1)[1]
    parts = urlsplit(f"{scheme}://{rest}")
    if scheme != "unix" and not parts.hostname:
        raise SharedUrlError(f"{variable}={redact(url)!r}: no host")
    if scheme == "unix" and not parts.path:
        raise SharedUrlError(f"{variable}={redact(url)!r}: no socket path")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise SharedUrlError(f"{variable}={redact(url)!r}: the port is not a number") from None
    return f"{scheme}://{rest}"


def parse_shared_url(url: str, variable: str = "ATOM_TIER_SHARED_URL") -> SharedTarget:
    """Parse a shared-tier URL (see the module docstring); SharedUrlError names ``variable``."""
    text = url.strip()
    if not text:
        raise SharedUrlError(f"{variable} is empty")
    scheme = _scheme(text)
    if scheme in _CLUSTER:
        node = _normalise(_CLUSTER[scheme] + text[len(scheme) :], variable, "redis")
        if _scheme(node) == "unix":
            raise SharedUrlError(f"{variable}: a cluster is reached over TCP, not unix://")
        return SharedTarget(True, (node,))
    nodes = [n for n in text.split(",") if n.strip()]
    if len(nodes) == 1:
        return SharedTarget(False, (_normalise(nodes[0], variable, "redis"),))
    first = _normalise(nodes[0], variable, "redis")
    base = urlsplit(first)
    urls = [first]
    for node in nodes[1:]:
        parsed = urlsplit(_normalise(node, variable, base.scheme))
        # Later nodes inherit the first one's credentials and query (TLS files).
        userinfo = base.netloc.rsplit("@", 1)[0] + "@" if "@" in base.netloc else ""
        netloc = parsed.netloc if "@" in parsed.netloc else userinfo + parsed.netloc
        urls.append(urlunsplit((parsed.scheme, netloc, parsed.path, base.query, "")))
    if any(_scheme(u) == "unix" for u in urls):
        raise SharedUrlError(f"{variable}: a cluster is reached over TCP, not unix://")
    return SharedTarget(True, tuple(urls))
