"""atom-tier's vLLM platforms: thin subclasses of vLLM's that delegate to :mod:`atom_tier.policy`.

- :mod:`.selection`: the logic behind the ``vllm.platform_plugins`` entry point (which class,
  if any, and the import-time environment).
- :mod:`.rocm`: ``AtomTierRocmPlatform(RocmPlatform)``. Importing it imports
  ``vllm.platforms.rocm``, which needs a ROCm GPU at import time.
- :mod:`.cpu`: ``AtomTierCpuPlatform(CpuPlatform)``, the opt-in CPU development platform
  (``ATOM_TIER_CPU_PLATFORM=1``).
- :mod:`.delegate`: what both classes' hooks do (policy, preflight, the feature block).

This package's ``__init__`` imports nothing, so selection never imports a platform module.
"""
