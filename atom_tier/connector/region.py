"""The DRAM tier's shared memory region, without the file vLLM leaves in /dev/shm.

vLLM's tiering spec maps the DRAM tier from ``/dev/shm/vllm_offload_<engine_id>.mmap``: the
workers create it while vLLM allocates the KV cache, and the scheduler maps the same file a
moment later. Nobody removes the name afterwards except the creating worker's orderly shutdown,
which a SIGTERM'd or killed server never reaches, so every stop leaked the whole tier in
/dev/shm (RAM that only a reboot or a manual ``rm`` gives back).

The fix: once the scheduler has mapped the file, every process that will ever map it has done
so (vLLM 0.32 builds the scheduler after every worker has registered its KV cache), so the name
is dropped right there. The mappings stay valid and the kernel frees the memory when the last
process exits, however it exits. The creating worker's cleanup then finds no name to remove,
which :class:`AtomTierSharedRegion` treats as the normal case instead of logging a failure.
"""

from __future__ import annotations

import os

from typing_extensions import override
from vllm.v1.kv_offload.cpu.shared_offload_region import SharedOffloadRegion

from atom_tier.connector import vllm_compat
from atom_tier.connector.vllm_compat import region_path
from atom_tier.log import get_logger

logger = get_logger(__name__)


def drop_region_name(engine_id: str) -> bool:
    """Unlink the region's file name; mappings already taken stay valid. True if removed."""
    path = region_path(engine_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    logger.debug("Unlinked %s: every process has mapped it", path)
    return True


class AtomTierSharedRegion(SharedOffloadRegion):
    """SharedOffloadRegion whose cleanup removes the file name only if it is still its own."""

    @override
    def cleanup(self) -> None:
        fd = getattr(self, "fd", None)
        # Leave the name alone when it is gone (dropped by the scheduler once mapped) or now
        # names another engine's file.
        if vllm_compat.region_unlinks_at_cleanup(self) and fd is not None:
            try:
                still_ours = os.stat(self.mmap_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                still_ours = False
            if not still_ours:
                vllm_compat.keep_region_file(self)
        super().cleanup()
