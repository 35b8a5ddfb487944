"""The demo's planner: a small deterministic OpenAI-compatible chat completions server.

`consumer demo` starts it on 127.0.0.1 and points MANA_LLM_URL at it, so a run goes the real
way: the runner's HTTP client posts the agent-context prompt, this server answers with a
plan, the runner writes the iteration back into sync_changes, and the projection brings it
round into the mission's snapshot.

The answer is a pure function of the request's messages (a hash picks 0 to 3 steps from a
fixed list), so two demos with the same traffic plan the same. A mission whose prompt holds
"[unanswerable]" gets prose instead of the JSON plan, which the runner counts as a parse
failure: the demo shows a failed run too. Every answer takes `delay` seconds, so runs
overlap and an agent's concurrency limit shows.

It can also run on its own (the compose stack's stub planner):

    python -m consumer.demo_planner --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

UNANSWERABLE = "[unanswerable]"
MODEL = "demo-planner"

_TOOLS = [
    ("Sammle die neuesten Quellen", "web.search", {"query": "neueste Quellen"}),
    ("Fasse die Notizen zusammen", "notes.summarize", {"limit": 20}),
    ("Lege eine Aufgabe an", "todo.create", {"title": "Nachfassen"}),
    ("Entwirf eine Antwort", "mail.draft", {"tone": "freundlich"}),
]


def plan_for(messages: list[dict[str, Any]]) -> str:
    """The assistant's content for these messages: a JSON plan, or prose for UNANSWERABLE."""
    text = "\n".join(str(m.get("content", "")) for m in messages)
    if UNANSWERABLE in text:
        return "I am sorry, I cannot plan this mission."
    digest = hashlib.sha256(text.encode()).digest()
    count = digest[0] % 4  # 0 steps: the iteration is approved at once
    steps = []
    for i in range(count):
        summary, tool, params = _TOOLS[(digest[1] + i) % len(_TOOLS)]
        steps.append(
            {
                "summary": summary,
                "toolName": tool,
                "params": params,
                "rationale": f"Schritt {i + 1} der Mission",
            }
        )
    summary = f"{count} Schritte geplant" if count else "Nichts zu tun"
    return json.dumps({"summary": summary, "steps": steps})


def completion(messages: list[dict[str, Any]]) -> dict[str, Any]:
    content = plan_for(messages)
    prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4
    completion_tokens = len(content) // 4
    return {
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class DemoPlanner:
    """The server in a thread: `with DemoPlanner() as p: p.url`; `requests` counts posts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay: float = 1.0) -> None:
        self.delay = delay
        self.requests = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a delayed answer must not hold up close()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        planner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the runner's client reuses connections

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length))
                    messages = body["messages"]
                    if not isinstance(messages, list):
                        raise TypeError("messages is not a list")
                except (ValueError, KeyError, TypeError) as exc:
                    self._send(400, {"error": {"message": f"bad request: {exc}"}})
                    return
                with planner._lock:
                    planner.requests += 1
                if planner.delay > 0 and planner._stopping.wait(planner.delay):
                    return  # shutting down
                self._send(200, completion(messages))

            def do_GET(self) -> None:  # noqa: N802 - a health probe for the compose stack
                self._send(200, {"status": "ok", "model": MODEL})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo's view shows the runs; access lines would only clutter it

        return Handler

    def start(self) -> DemoPlanner:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="demo-planner", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DemoPlanner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.demo_planner",
        description="deterministic OpenAI-compatible demo planner",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds per answer (1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    planner = DemoPlanner(args.host, args.port, delay=args.delay)
    print(f"demo planner on {planner.url}/v1/chat/completions", flush=True)
    try:
        planner._server.serve_forever(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        planner._server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
