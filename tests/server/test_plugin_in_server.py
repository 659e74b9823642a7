"""The general plugin really runs inside a real CPU vLLM server's processes."""

from __future__ import annotations

import re

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.tiny_model import words

pytestmark = pytest.mark.server

LOADED = re.compile(r"\((\w[\w-]*) pid=(\d+)\).*atom-tier \S+ general plugin loaded \(pid (\d+)\)")


def test_general_plugin_loaded_in_engine_core_and_worker(cpu_server: CpuVllmServer) -> None:
    loaded = LOADED.findall(cpu_server.log_text())
    roles = {role for role, _, _ in loaded}
    pids = {int(pid) for _, pid, _ in loaded}
    assert {"EngineCore", "VllmWorker-0"} <= roles, cpu_server.log_tail()
    assert all(prefix == own for _, prefix, own in loaded), "the line must come from that process"
    assert cpu_server.pid not in pids and len(pids) >= 2, "engine and worker are child processes"


def test_server_answers_with_atom_tier_installed(cpu_server: CpuVllmServer) -> None:
    reply = cpu_server.complete(words(16), max_tokens=4)
    assert reply["usage"]["prompt_tokens"] == 16
    assert reply["usage"]["completion_tokens"] == 4


def test_bad_setting_stops_the_server_naming_the_variable(server_factory) -> None:  # type: ignore[no-untyped-def]
    from atom_tier.devtools.cpu_server import ServerStartError

    with pytest.raises(ServerStartError) as failed:
        server_factory(env={"ATOM_TIER_QUICK_REDUCE": "INT5"}, startup_timeout=240)
    assert "ATOM_TIER_QUICK_REDUCE='INT5' is not valid" in str(failed.value)
