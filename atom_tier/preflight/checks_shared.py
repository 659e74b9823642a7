"""Checks of the shared (Valkey/Redis) tier: its URL and secret at every start, its server in
``atom-tier doctor`` (a starting vLLM does not wait on the network: the tier itself degrades
when the server is down, see ``tiers/shared_store``)."""

from __future__ import annotations

from collections.abc import Iterator

from atom_tier.preflight.context import CheckContext
from atom_tier.preflight.findings import Finding, Level, check
from atom_tier.settings import ConnectorEngine, variable_of
from atom_tier.tiers.shared_client import server_warnings
from atom_tier.tiers.shared_url import SharedUrlError, parse_shared_url
from atom_tier.tiers.shared_value import load_signer


def _native_shared_tier(ctx: CheckContext) -> bool:
    # With the lmcache engine, LMCACHE_REMOTE_URL is LMCache's own remote backend.
    return bool(ctx.settings.shared_url) and ctx.settings.connector is ConnectorEngine.NATIVE


@check("shared-url", area="storage")
def check_shared_url(ctx: CheckContext) -> Iterator[Finding]:
    if not _native_shared_tier(ctx):
        return
    variable = variable_of("shared_url")
    try:
        target = parse_shared_url(str(ctx.settings.shared_url), variable)
        signer = load_signer(ctx.settings)
    except (SharedUrlError, ValueError) as error:
        yield Finding(
            Level.ERROR,
            "shared-url",
            str(error),
            f"set {variable} to redis://host:port, rediss://..., unix:///path, "
            "redis+cluster://host:port or a comma-separated node list (or unset it)",
        )
        return
    signed = f", chunks signed (key id {signer.key_id})" if signer else ", chunks not signed"
    yield Finding(Level.OK, "shared-url", f"shared tier at {target.display}{signed}")


@check("shared-server", area="storage")
def check_shared_server(ctx: CheckContext) -> Iterator[Finding]:
    probe = ctx.facts.shared
    if probe is None or probe.bad_url or not _native_shared_tier(ctx):
        return
    variable = variable_of("shared_url")
    if probe.auth_failed:
        yield Finding(
            Level.ERROR,
            "shared-server",
            f"the shared tier's server at {probe.display} refused the credentials: {probe.error}",
            f"fix the user and password in {variable} (or the server's ACL)",
        )
        return
    if probe.error is not None or probe.facts is None:
        yield Finding(
            Level.WARNING,
            "shared-server",
            f"the shared tier's server at {probe.display} is not usable: {probe.error}. A "
            "server starts anyway and retries it (lookups miss meanwhile)",
            f"start the server or fix {variable}",
        )
        return
    facts = probe.facts
    timing = (
        f"PING {probe.rtt_ms:.2f} ms, one {probe.value_bytes >> 20} MiB value: SET "
        f"{probe.set_mib_s:.0f} MiB/s, GET {probe.get_mib_s:.0f} MiB/s"
    )
    yield Finding(
        Level.OK,
        "shared-server",
        f"{facts.product} {facts.version} at {probe.display}, {facts.nodes} node(s), maxmemory "
        f"{facts.maxmemory} bytes, policy {facts.policy}; {timing}",
    )
    for warning in server_warnings(facts):
        message, _, fix = warning.partition("; fix: ")
        yield Finding(Level.WARNING, "shared-server-memory", message, fix)
