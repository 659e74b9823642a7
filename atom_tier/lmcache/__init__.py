"""LMCache as atom-tier's ``lmcache`` engine (``ATOM_TIER_CONNECTOR=lmcache``).

* :mod:`.config`: settings -> LMCache's configuration (pure) and its telemetry variable;
* :mod:`.kv_transfer`: the ``kv_transfer_config`` for vLLM's ``LMCacheConnectorV1``;
* :mod:`.native_ops`: which build of LMCache's native ops is installed (HIP, CUDA, none),
  read from the extension's ELF header without importing LMCache (:mod:`.elf`).

The guards that make it safe on ROCm are preflight checks in
:mod:`atom_tier.preflight.checks_lmcache`. Nothing here imports LMCache or vLLM at import time.
"""

from __future__ import annotations

from atom_tier.lmcache.config import (
    LMCacheConfig,
    LMCacheConfigError,
    apply_lmcache_environment,
    lmcache_config,
    lmcache_environment,
)

__all__ = [
    "LMCacheConfig",
    "LMCacheConfigError",
    "apply_lmcache_environment",
    "lmcache_config",
    "lmcache_environment",
]
