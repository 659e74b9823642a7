"""vLLM entry points.

`register_platform` (group `vllm.platform_plugins`) runs when vLLM resolves its platform, in every
process; `register` (group `vllm.general_plugins`) runs once in every vLLM process: API server,
engine core and workers. Both must be cheap and safe to call repeatedly.
"""

from __future__ import annotations

import os

from atom_tier import __version__
from atom_tier.lmcache.config import apply_lmcache_environment
from atom_tier.log import get_logger
from atom_tier.names import HASH_SEED
from atom_tier.settings import load_foreign_env, load_settings

logger = get_logger(__name__)


def ensure_hash_seed() -> None:
    """Fix PYTHONHASHSEED for this process's vLLM code and every process it spawns.

    vLLM's prefix-cache hash root (and LMCache's chunk keys, chained from it) come from
    PYTHONHASHSEED; unset, every process picks its own random root and nothing ever hits.
    """
    if load_foreign_env().pythonhashseed is None:
        os.environ["PYTHONHASHSEED"] = HASH_SEED


def register_platform() -> str | None:
    """vllm.platform_plugins: the atom-tier platform class path, or None to stand aside.

    The decision (ROCm torch, the CPU development switch, ATOM's plugin) and the import-time
    environment live in atom_tier.platform.selection.
    """
    from atom_tier.platform.selection import register_platform as select_platform
    from atom_tier.platform.startup import stops_start_up

    with stops_start_up():  # a bad variable ends vLLM here: one block, no traceback
        platform = select_platform()
    return platform


def register() -> None:
    """vllm.general_plugins: hash seed and connector registration, in every vLLM process."""
    from atom_tier.platform.startup import stops_start_up, warn_unknown_settings

    with stops_start_up():  # a bad variable ends vLLM here: one block, no traceback
        settings = load_settings()
    if settings.disable:
        return
    warn_unknown_settings()
    ensure_hash_seed()
    # LMCache reads its telemetry switch only from the environment; set it (off unless the
    # operator asked) in every process, whether or not LMCache is used.
    apply_lmcache_environment(settings, os.environ)
    from atom_tier.connector import register_connector

    register_connector()
    logger.info("atom-tier %s general plugin loaded (pid %d)", __version__, os.getpid())
