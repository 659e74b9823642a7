"""Tiered-connector guards: is the DRAM tier big enough to be useful?

GPU loads come only from the DRAM tier; an NVMe hit is first promoted into DRAM. When DRAM
cannot hold the prefixes being reloaded at the same time, promotions fail over and over, nothing
loads, and time to first token gets worse than with no cache at all (seen: 370 ms against
95 ms cold). So the DRAM tier must hold the largest reused prefix (max-model-len, in whole
chunks) times the number of reloads in flight at once:

* ``ATOM_TIER_RELOAD_CONCURRENCY`` when the operator knows it;
* otherwise as many full-length prefixes as the device KV cache holds, at most
  ``--max-num-seqs`` (reloaded KV has to fit in device memory too, so that is the ceiling);
* before vLLM has profiled memory the device KV cache size is unknown (unless
  ``--num-gpu-blocks-override`` gives it), so preflight checks one prefix and the connector
  repeats the check with the real size when it starts.

The arithmetic is :mod:`atom_tier.sizing`'s; what it is computed from is probed in
:mod:`atom_tier.preflight.probes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from atom_tier.names import CONNECTOR_NAME
from atom_tier.preflight.context import CheckContext
from atom_tier.preflight.findings import Finding, Level, check
from atom_tier.settings import AtomTierSettings, ConnectorEngine, variable_of
from atom_tier.sizing import (
    GIB,
    DramBudget,
    DramRequirement,
    device_kv_tokens,
    device_share,
    dram_requirement,
    dram_tier_bytes,
    gb_setting,
    human_size,
    kv_bytes_per_token,
)

# vLLM 0.32's KV block size for a server started without --block-size, for `doctor` (which
# has no VllmConfig): CacheConfig.DEFAULT_BLOCK_SIZE, which CpuPlatform.check_and_update_config
# raises to 128 on CPU. A server checks against the block size its config really has.
DEFAULT_BLOCK_SIZE = 16
DEFAULT_BLOCK_SIZES = {"cpu": 128}
# Extra-config keys with which an operator chooses the chunk size instead of the setting.
OPERATOR_CHUNK_KEYS = frozenset({"block_size", "blocks_per_chunk"})


def _fix(requirement: DramRequirement, settings: AtomTierSettings) -> str:
    return (
        f"set ATOM_TIER_DRAM_GB to {gb_setting(requirement.minimum_bytes, up=True)} or more; "
        "or lower --max-model-len or --max-num-seqs; "
        "or set ATOM_TIER_RELOAD_CONCURRENCY to the reloads you really expect at once"
        + ("" if settings.nvme_enabled else "; or set ATOM_TIER_CONNECTOR=off")
    )


def evaluate_dram_tier(
    dram_bytes: int, requirement: DramRequirement, settings: AtomTierSettings
) -> Finding:
    """The guard's verdict. Too small is an error with an NVMe tier (promotions thrash and
    TTFT gets worse than cold) and a warning for DRAM alone (fewer hits, no harm)."""
    if dram_bytes >= requirement.minimum_bytes:
        return Finding(
            Level.OK,
            "dram-tier-size",
            f"DRAM tier {human_size(dram_bytes)} holds the minimum {requirement.explain()}",
        )
    level = Level.ERROR if settings.nvme_enabled else Level.WARNING
    consequence = (
        "NVMe hits could never be promoted into DRAM and loads would be slower than cold"
        if settings.nvme_enabled
        else "long prefixes cannot be kept and reloaded"
    )
    return Finding(
        level,
        "dram-tier-too-small",
        f"DRAM tier {human_size(dram_bytes)} is smaller than the minimum {requirement.explain()}: "
        f"{consequence}",
        _fix(requirement, settings),
    )


def evaluate_shm_room(dram_bytes: int, budget: DramBudget) -> Finding | None:
    """The DRAM tier lives in one /dev/shm file that vLLM pre-faults at start-up: a tier larger
    than the free space there stops the server while it starts (Docker gives containers 64 MB
    unless told otherwise). None when /dev/shm cannot be read or the tier fits."""
    if budget.shm_free is None or dram_bytes <= budget.shm_free:
        return None
    size = f"{human_size(budget.shm_size)} " if budget.shm_size is not None else ""
    shm_gib = math.ceil(dram_bytes / GIB) + 1  # the tier plus room for vLLM's own use
    return Finding(
        Level.ERROR,
        "dram-tier-exceeds-shm",
        f"DRAM tier {human_size(dram_bytes)} does not fit in /dev/shm ({size}with "
        f"{human_size(budget.shm_free)} free), where vLLM maps it: the server would fail at "
        "start-up",
        f"give the container more shared memory (docker run --shm-size={shm_gib}g or "
        "--ipc=host), free /dev/shm (`atom-tier doctor` names stale segments), or lower "
        "ATOM_TIER_DRAM_GB",
    )


def chunk_tokens_finding(settings: AtomTierSettings, block_size: int, whose: str) -> Finding:
    """The chunk size against a KV block size (``whose``: where that size comes from).

    An offloaded chunk holds whole blocks. An explicit value that does not is an error; the
    default is rounded up to whole blocks instead (large-block models), as the connector does.
    """
    chunk = settings.chunk_tokens
    rounded = math.ceil(chunk / block_size) * block_size
    if chunk == rounded or "chunk_tokens" not in settings.model_fields_set:
        rounding = "" if chunk == rounded else f" (the default, rounded up to {rounded})"
        return Finding(
            Level.OK,
            "chunk-tokens",
            f"chunks of {chunk} tokens{rounding} hold whole KV blocks of {block_size} tokens "
            f"({whose})",
        )
    variable = variable_of("chunk_tokens")
    below = f" or {rounded - block_size}" if rounded > block_size else ""
    default = AtomTierSettings.model_fields["chunk_tokens"].default
    return Finding(
        Level.ERROR,
        "chunk-tokens",
        f"{variable}={chunk} is not a multiple of vLLM's KV block size, {block_size} tokens "
        f"({whose}): an offloaded chunk must hold whole blocks",
        f"set {variable}={rounded}{below} (a multiple of {block_size}), or unset it for the "
        f"default ({default}, rounded up to whole blocks)",
    )


def connector_engine_finding(settings: AtomTierSettings) -> Finding | None:
    """--kv-transfer-config names AtomTierConnector while the settings ask for another engine:
    None when they agree."""
    if settings.connector is ConnectorEngine.NATIVE:
        return None
    variable = variable_of("connector")
    return Finding(
        Level.ERROR,
        "connector-engine",
        f"--kv-transfer-config names {CONNECTOR_NAME} (the native engine) but "
        f"{variable}={settings.connector.value}",
        f"set {variable}=native, or remove {CONNECTOR_NAME} from --kv-transfer-config",
    )


def uses_atom_tier_connector(vllm_config: Any) -> bool:
    transfer = getattr(vllm_config, "kv_transfer_config", None)
    return transfer is not None and transfer.kv_connector == CONNECTOR_NAME


@check("connector-dram-tier", area="connector")
def check_dram_tier(ctx: CheckContext) -> Iterable[Finding]:
    config = ctx.vllm_config
    if config is None or not uses_atom_tier_connector(config):
        return []
    settings = ctx.settings
    budget = ctx.facts.dram_budget
    dram = dram_tier_bytes(settings, budget, device_share(config, ctx.facts.devices_on_node))
    if dram <= 0:
        return [
            Finding(
                Level.ERROR,
                "dram-tier-off",
                f"{CONNECTOR_NAME} is configured but the DRAM tier is off or has no size "
                "(every reload goes through DRAM)",
                "set ATOM_TIER_DRAM_GB above 0 and ATOM_TIER_DRAM_ENABLED=true, or remove "
                f"{CONNECTOR_NAME} from --kv-transfer-config",
            )
        ]
    requirement = dram_requirement(
        max_model_len=config.model_config.max_model_len,
        kv_bytes_per_token=kv_bytes_per_token(config),
        max_num_seqs=config.scheduler_config.max_num_seqs,
        chunk_tokens=settings.chunk_tokens,
        device_kv_tokens=device_kv_tokens(config),
        reload_concurrency=settings.reload_concurrency,
    )
    no_room = evaluate_shm_room(dram, budget)
    return [evaluate_dram_tier(dram, requirement, settings), *([no_room] if no_room else [])]


@check("connector-settings", area="connector")
def check_connector_settings(ctx: CheckContext) -> Iterable[Finding]:
    """What the connector would otherwise refuse only once it is built, after the weights load.

    In a server, against its VllmConfig (the block size vLLM resolved: final on CPU and
    wherever --block-size is given; a GPU attention backend may still change it in the worker,
    where the connector checks again). In ``doctor``, against vLLM's default block size here.
    """
    config = ctx.vllm_config
    if config is None:
        if ctx.settings.connector is not ConnectorEngine.NATIVE:
            return []
        kind = ctx.facts.torch.kind
        block = DEFAULT_BLOCK_SIZES.get(kind, DEFAULT_BLOCK_SIZE)
        whose = (
            f"vLLM's default on {'CPU' if kind == 'cpu' else 'GPUs'}; a server started with "
            "--block-size N needs a multiple of N"
        )
        return [chunk_tokens_finding(ctx.settings, block, whose)]
    if not uses_atom_tier_connector(config):
        return []
    mismatch = connector_engine_finding(ctx.settings)
    if mismatch is not None:
        return [mismatch]
    extra = config.kv_transfer_config.kv_connector_extra_config or {}
    block_size = config.cache_config.block_size
    if OPERATOR_CHUNK_KEYS & extra.keys() or not block_size:
        return []  # the operator's chunk size stands; vLLM checks it
    return [chunk_tokens_finding(ctx.settings, int(block_size), "this server's block size")]
