"""A tiny OpenAI-compatible chat completions server for tests.

    with PlannerStub(content='{"summary": "ok", "steps": []}') as stub:
        config = PlannerConfig(base_url=stub.url, api_key="k")
        ...
        stub.requests[0].headers["authorization"], stub.requests[0].body["messages"]

It runs http.server in a thread on 127.0.0.1 (a free port). Every POST is recorded (path,
lower-cased headers, JSON body); the reply is built from the attributes at the time of the
request, so a test may change them between calls: `content`, `status`, `delay` (seconds
before answering), `usage` (the usage object, or None to leave it out) and `raw` (a body
sent verbatim instead of a completion, or of the error body when status >= 400).

`script`: a list of per-request overrides (dicts of those attribute names, plus "headers"),
consumed one per request in arrival order; when empty, the attributes apply. `calls` records
(start, end, agent name or None) per answered request, in time.monotonic(), so a test can
check how many requests of one agent overlapped.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_AGENT_LINE = re.compile(r"^Agent: (.+)$", re.MULTILINE)


def _agent_of(body: Any) -> str | None:
    """The agent's name from the <agent_context> block of the system message, if any."""
    try:
        system = body["messages"][0]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    match = _AGENT_LINE.search(system) if isinstance(system, str) else None
    return match.group(1) if match else None


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end and a start at the same time do not
    overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


class Recorded:
    def __init__(self, path: str, headers: dict[str, str], body: Any) -> None:
        self.path = path
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Recorded({self.path!r}, body={self.body!r})"


class PlannerStub:
    def __init__(
        self,
        content: str = '{"summary": "nothing to do", "steps": []}',
        *,
        status: int = 200,
        delay: float = 0.0,
        usage: dict[str, Any] | None = None,
        raw: str | None = None,
        keep_alive: bool = False,
    ) -> None:
        # keep_alive: answer HTTP/1.1 and keep connections open, as a real endpoint does (the
        # run benchmark); off by default, so every test connection closes with its answer.
        self.keep_alive = keep_alive
        self.content = content
        self.status = status
        self.delay = delay
        self.usage: dict[str, Any] | None = (
            usage if usage is not None
            else {"prompt_tokens": 100, "completion_tokens": 23, "total_tokens": 123}
        )
        self.raw = raw
        self.script: list[dict[str, Any]] = []
        self.calls: list[tuple[float, float, str | None]] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stub first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reply_body(self, over: dict[str, Any] | None = None) -> bytes:
        over = over or {}
        raw = over.get("raw", self.raw)
        if raw is not None:
            return str(raw).encode()
        completion: dict[str, Any] = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": "stub-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": over.get("content", self.content)},
                "finish_reason": "stop",
            }],
        }
        if self.usage is not None:
            completion["usage"] = self.usage
        return json.dumps(completion).encode()

    def start(self) -> PlannerStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if stub.keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                started = time.monotonic()
                with stub._lock:
                    stub.requests.append(
                        Recorded(self.path, {k.lower(): v for k, v in self.headers.items()},
                                 body)
                    )
                    over = stub.script.pop(0) if stub.script else {}
                status = over.get("status", stub.status)
                delay = over.get("delay", stub.delay)
                if delay > 0 and stub._stopping.wait(delay):
                    return  # shutting down
                raw = over.get("raw", stub.raw)
                payload = (stub.reply_body(over) if status < 400 or raw is not None
                           else b'{"error": {"message": "stub failure"}}')
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in over.get("headers", {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up (a timeout test)
                with stub._lock:
                    stub.calls.append((started, time.monotonic(), _agent_of(body)))

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False  # a delayed handler must not hold up close()
        self._server = server
        # A short poll interval keeps close() (shutdown) quick.
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,),
                                        name="planner-stub", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PlannerStub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
