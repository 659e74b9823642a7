"""A tiny OpenAI-compatible HTTP server standing in for one vLLM replica (a stand-in, not vLLM).

The replay client speaks plain HTTP, so routing across several endpoints is tested against
real HTTP servers on 127.0.0.1 that start in milliseconds, where two CPU vLLM servers would
take minutes. Each one records every prompt it was sent and counts, on ``/metrics`` under
vLLM's metric names, the leading tokens a prompt shared with an earlier prompt *it* saw (a
prefix cache private to the replica) and the rest as computed. Like vLLM it answers 400 to a
request whose prompt plus ``max_tokens`` is longer than its ``max_model_len``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


def _shared_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


class StandInReplica:
    """One stand-in server on a free loopback port; ``with`` starts and stops it."""

    def __init__(self, model: str = "tiny", max_model_len: int = 4096) -> None:
        self.model = model
        self.max_model_len = max_model_len
        self.prompts: list[list[int]] = []
        # The body of every completion request it answered (prompt included).
        self.bodies: list[dict[str, Any]] = []
        # The X-Request-Id header of each of those requests (None where it had none).
        self.request_ids: list[str | None] = []
        self.cached_tokens = 0
        self.computed_tokens = 0
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> StandInReplica:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def _serve(self, prompt: list[int]) -> int:
        with self._lock:
            hit = max((_shared_prefix(prompt, p) for p in self.prompts), default=0)
            self.prompts.append(prompt)
            self.cached_tokens += hit
            self.computed_tokens += len(prompt) - hit
        return len(prompt)

    def _metrics(self) -> str:
        with self._lock:
            return (
                "# TYPE vllm:prompt_tokens_cached_by_source counter\n"
                f'vllm:prompt_tokens_cached_by_source_total{{source="device"}} '
                f"{float(self.cached_tokens)}\n"
                f'vllm:prompt_tokens_by_source_total{{source="local_compute"}} '
                f"{float(self.computed_tokens)}\n"
            )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet test output

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    entry = {"id": replica.model, "max_model_len": replica.max_model_len}
                    self._send(200, json.dumps({"data": [entry]}).encode(), "application/json")
                elif self.path == "/metrics":
                    self._send(200, replica._metrics().encode(), "text/plain")
                else:
                    self._send(404, b"{}", "application/json")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                request = json.loads(self.rfile.read(length))
                if request.get("model") != replica.model:
                    error = {"error": {"message": f"model {request.get('model')} not served"}}
                    self._send(404, json.dumps(error).encode(), "application/json")
                    return
                tokens = int(request["max_tokens"])
                if len(request["prompt"]) + tokens > replica.max_model_len:
                    message = (
                        f"This model's maximum context length is {replica.max_model_len} "
                        f"tokens. However, you requested {len(request['prompt']) + tokens}."
                    )
                    self._send(
                        400,
                        json.dumps({"error": {"message": message}}).encode(),
                        "application/json",
                    )
                    return
                with replica._lock:
                    replica.bodies.append(request)
                    replica.request_ids.append(self.headers.get("X-Request-Id"))
                prompt_tokens = replica._serve(list(request["prompt"]))
                events = [{"choices": [{"index": 0, "text": "x"}]} for _ in range(tokens)]
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}
                events.append({"choices": [], "usage": usage})
                body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, body.encode(), "text/event-stream")

        return Handler
