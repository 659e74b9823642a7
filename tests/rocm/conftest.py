"""ROCm integration tests: run only where torch is a ROCm build and an AMD GPU is visible.

They are atom-tier's only tests on AMD hardware; docker/run-rocm-tests.sh runs them inside the
image docker/Dockerfile.rocm builds (`pytest -m rocm`). Everywhere else every test in this
folder is skipped at collection, with the reason (no model is built, no server started).
Each test must carry ``@pytest.mark.rocm`` (module ``pytestmark``); collection fails otherwise,
so ``-m rocm`` can never silently leave one out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rocm_support import keep_log, model_under_test, skip_reason

from atom_tier.devtools.cpu_server import CpuVllmServer

HERE = Path(__file__).resolve().parent
# GPU servers compile and capture graphs at start-up: slower than the CPU harness's default.
STARTUP_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason()
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue  # this hook sees the whole session's items
        if item.get_closest_marker("rocm") is None:
            raise pytest.UsageError(f"{item.nodeid} lacks @pytest.mark.rocm")
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def rocm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the servers load: ``ROCM_TEST_MODEL`` (a local directory) or the generated
    head-dim-128 Qwen3 (rocm_support.write_model)."""
    return Path(model_under_test(tmp_path_factory.mktemp("rocm")))


@pytest.fixture(scope="module")
def rocm_server(
    module_server_factory: object, rocm_model: Path, request: pytest.FixtureRequest
) -> Iterator[object]:
    """``rocm_server(name, args=[...], env={...})``: a vLLM OpenAI server on the GPU(s) with
    atom-tier installed, stopped at the end of the module; its log is kept for the operator.

    The harness is atom_tier.devtools.cpu_server's: despite its name nothing in it is CPU
    specific (this interpreter's `python -m vllm.entrypoints.openai.api_server`, a free port,
    readiness wait, process-group shutdown)."""
    started: list[tuple[str, CpuVllmServer]] = []

    def start(
        name: str, args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> CpuVllmServer:
        server: CpuVllmServer = module_server_factory(  # type: ignore[operator]
            args=args or [],
            env={"PYTHONHASHSEED": "0", **(env or {})},
            model_dir=rocm_model,
            name=name,
            startup_timeout=STARTUP_TIMEOUT,
        )
        started.append((name, server))
        return server

    yield start
    for name, server in started:
        keep_log(server.log_path, f"{request.module.__name__}-{name}")
