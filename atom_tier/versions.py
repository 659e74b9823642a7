"""The vLLM versions atom-tier supports, stated in this one place."""

from __future__ import annotations

import re

# atom-tier hooks vLLM internals (platform hooks, the offloading connector's spec and tiering
# contract), which change between minor releases: support one minor series at a time.
SUPPORTED_VLLM = ">=0.32.0,<0.33"
_SUPPORTED_SERIES = (0, 32)


def vllm_supported(version: str) -> bool:
    """True for 0.32.x releases, local builds (0.32.0+rocm700) and pre-releases of 0.32.x."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and (int(match.group(1)), int(match.group(2))) == _SUPPORTED_SERIES
