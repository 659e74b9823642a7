"""atom_tier.kernels is a standalone library: nothing vLLM loads from atom-tier imports it, and
the README says so rather than implying the served model runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

# What vLLM imports from atom-tier while it starts and serves: both entry points, both platform
# classes' shared hooks, the policy, preflight and the connector.
SERVING_MODULES = (
    "atom_tier.plugin",
    "atom_tier.platform.selection",
    "atom_tier.platform.hooks",
    "atom_tier.platform.cpu",
    "atom_tier.policy.plan",
    "atom_tier.preflight",
    "atom_tier.connector.connector",
)


def test_serving_path_never_imports_atom_tier_kernels() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {SERVING_MODULES!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('atom_tier.kernels')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_readme_says_the_kernels_are_standalone_and_not_served() -> None:
    text = README.read_text()
    assert "standalone library" in text and "the served model never\n  calls it" in text
    assert "| `kernels/` | Triton kernels, installed as `atom_tier.kernels` |" not in text
