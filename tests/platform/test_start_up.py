"""What a starting vLLM shows for atom-tier's errors and warnings (atom_tier.platform.startup).

The entry points are called as vLLM calls them; the processes are real (the once-per-server
warning is checked in a real child process). A real server's output is checked in
tests/server/test_start_up_errors.py.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator

import pytest

from atom_tier import plugin
from atom_tier.platform import startup
from atom_tier.preflight import PreflightError
from atom_tier.preflight.findings import Finding, Level
from atom_tier.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No atom-tier variable from the caller; os.environ restored (the plugin sets some)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.upper().startswith(("ATOM_TIER_", "LMCACHE_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(startup, "_warned", set())
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("entry_point", [plugin.register, plugin.register_platform])
def test_bad_setting_ends_the_entry_point_with_one_block(
    entry_point: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATOM_TIER_QUICK_REDUCE", "INT5")
    with pytest.raises(SystemExit) as stopped:
        entry_point()  # type: ignore[operator]
    assert stopped.value.code == "\n".join(
        [
            "atom-tier: vLLM not started: an invalid setting",
            "- ATOM_TIER_QUICK_REDUCE='INT5' is not valid: expected one of INT4, INT6, INT8, FP, "
            "NONE",
            "  fix: set ATOM_TIER_QUICK_REDUCE to an allowed value, or unset it for the default "
            "INT4",
        ]
    )
    assert stopped.value.__suppress_context__  # no chained traceback either


def test_settings_block_names_each_variable_and_its_default() -> None:
    with pytest.raises(SettingsError) as failed:
        load_settings({"LMCACHE_CHUNK_SIZE": "2.5", "ATOM_TIER_NVME_GB": "-1"})
    block = startup.settings_block(failed.value).splitlines()
    assert block[0] == "atom-tier: vLLM not started: invalid settings"
    assert "- LMCACHE_CHUNK_SIZE='2.5' is not valid: expected an integer > 0" in block
    assert "  fix: set LMCACHE_CHUNK_SIZE to an allowed value, or unset it for the default 256" in (
        block
    )
    assert "  fix: set ATOM_TIER_NVME_GB to an allowed value, or unset it" in block
    assert len(block) == 5


def test_preflight_block_lists_each_error_with_its_fix() -> None:
    found = [
        Finding(Level.ERROR, "hash-seed", "PYTHONHASHSEED='random' is not fixed", "export it"),
        Finding(Level.ERROR, "chunk-tokens", "ATOM_TIER_CHUNK_TOKENS=100 is not whole", "use 128"),
    ]
    with pytest.raises(SystemExit) as stopped, startup.stops_start_up():
        raise PreflightError(found)
    assert stopped.value.code == "\n".join(
        [
            "atom-tier: vLLM not started: preflight found 2 errors",
            "- [hash-seed] PYTHONHASHSEED='random' is not fixed",
            "  fix: export it",
            "- [chunk-tokens] ATOM_TIER_CHUNK_TOKENS=100 is not whole",
            "  fix: use 128",
        ]
    )


def test_other_errors_pass_through_unchanged() -> None:
    with pytest.raises(KeyError), startup.stops_start_up():
        raise KeyError("not a configuration error")


def test_unknown_setting_is_warned_once_in_the_first_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ATOM_TIER_DRAM_G", "5")
    logger = logging.getLogger("vllm.atom_tier")
    monkeypatch.setattr(logger, "propagate", True)  # vLLM's logger may stop at "vllm"
    with caplog.at_level(logging.WARNING, logger="vllm.atom_tier"):
        plugin.register()
        plugin.register()  # vLLM may load general plugins more than once in a process
    warnings = [r.getMessage() for r in caplog.records if "ATOM_TIER_DRAM_G " in r.getMessage()]
    assert warnings == [
        "atom-tier: ATOM_TIER_DRAM_G is not an atom-tier setting and is ignored (closest "
        "setting: ATOM_TIER_DRAM_GB); fix: rename it to ATOM_TIER_DRAM_GB"
    ]


def test_unknown_setting_is_not_repeated_in_child_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM's engine core and workers are children of the API server, with its environment."""
    monkeypatch.setenv("ATOM_TIER_DRAM_G", "5")
    assert startup.warn_unknown_settings() != []  # this process: the one vLLM started in
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(startup.warn_unknown_settings) == []
