"""Synthetic trace folders for the replay tests (the real traces never enter the project)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atom_tier.replay.synth import SynthSpec, write_traces


@pytest.fixture
def synth_dir(tmp_path: Path) -> Path:
    """Six synthetic traces (gzip), some with sub-agents."""
    folder = tmp_path / "traces"
    write_traces(folder, SynthSpec(count=6, seed=3, subagent_rate=0.5))
    return folder
