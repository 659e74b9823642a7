"""The environment atom-tier's ROCm platform sets before AITER and vLLM read it at import time.

Kept free of vLLM imports: it is used while vLLM is still resolving its platform, when importing
``vllm.config`` would resolve the platform a second time (see :mod:`atom_tier.platform`).

``VLLM_ROCM_USE_AITER=1`` plus the MHA and MLA sub-switches the AITER attention backends need;
quick all-reduce quantization for vLLM (``VLLM_ROCM_QUICK_REDUCE_QUANTIZATION``) and AITER
(``AITER_QUICK_REDUCE_QUANTIZATION``), INT4 by default, ``NONE`` to disable; and
``PYTHONHASHSEED=0`` so prefix hashes agree across processes. Selection sets them with
set-if-absent semantics: an operator's explicit value wins.

Choice: AITER's quick all-reduce has no INT8 codec (its choices are
FP, FP8, INT6, INT4, INT3, NONE). ``ATOM_TIER_QUICK_REDUCE=INT8`` gives vLLM INT8 and AITER FP8:
the same 8 bits on the wire and the closest accuracy/bandwidth trade-off AITER offers.
"""

from __future__ import annotations

from atom_tier.names import HASH_SEED
from atom_tier.settings import AtomTierSettings, QuickReduce

AITER_QUICK_REDUCE = {
    QuickReduce.INT4: "INT4",
    QuickReduce.INT6: "INT6",
    QuickReduce.INT8: "FP8",  # AITER has no INT8 codec: same width, see module docstring
    QuickReduce.FP: "FP",
    QuickReduce.NONE: "NONE",
}


def import_time_env(settings: AtomTierSettings, platform: str) -> dict[str, str]:
    """Variables AITER and vLLM read at import time in processes spawned later."""
    env = {"PYTHONHASHSEED": HASH_SEED}
    if platform == "rocm":
        quick = settings.quick_reduce
        env.update(
            {
                "VLLM_ROCM_USE_AITER": "1",
                "VLLM_ROCM_USE_AITER_MHA": "1",
                "VLLM_ROCM_USE_AITER_MLA": "1",
                "VLLM_ROCM_QUICK_REDUCE_QUANTIZATION": quick.value,
                "AITER_QUICK_REDUCE_QUANTIZATION": AITER_QUICK_REDUCE[quick],
            }
        )
    return env
