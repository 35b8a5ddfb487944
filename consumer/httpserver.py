"""A tiny HTTP/1.1 endpoint for /metrics and /healthz.

One request per connection, `Connection: close`, no keep-alive, no chunking: scrapers and probes
need nothing more, and it spares us a web framework. Every connection is bounded by a size limit
on the request head and a deadline, so a slow or hostile client cannot hold it open; an error in
one connection is logged and never reaches the listener.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskStatus

from consumer import metrics
from consumer.health import Health

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192  # request line + headers; we ignore bodies
REQUEST_TIMEOUT_S = 5.0  # whole exchange: read head, write response
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


async def serve_http(
    port: int,
    health: Health,
    host: str = "127.0.0.1",
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled. Reports the bound port via task_status (port 0 = ephemeral).

    The CLI treats `--metrics-port 0` as "off" and does not call this; port 0 here is for tests.
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = listener.extra(SocketAttribute.local_port)
        log.info("metrics/health HTTP on %s:%d", host, bound)
        task_status.started(bound)

        async def handle(stream: ByteStream) -> None:
            await _handle_connection(stream, health)

        await listener.serve(handle)


async def _handle_connection(stream: ByteStream, health: Health) -> None:
    async with stream:
        try:
            with anyio.move_on_after(REQUEST_TIMEOUT_S):
                head = await _read_head(stream)
                if head is None:
                    response = _response(431, _TEXT, b"request head too large\n")
                else:
                    response = _route(head, health)
                await stream.send(response)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass  # client went away; nothing to answer
        except Exception:
            # Never let one request take the server down (serve() would cancel all handlers).
            log.exception("metrics/health request failed")


async def _read_head(stream: ByteStream) -> bytes | None:
    """Bytes up to the blank line ending the head; None when over MAX_HEAD_BYTES."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > MAX_HEAD_BYTES:
            return None
        try:
            buf += await stream.receive(4096)
        except anyio.EndOfStream:
            break  # a client that half-closed after the request line still gets an answer
    return bytes(buf[:MAX_HEAD_BYTES])


def _route(head: bytes, health: Health) -> bytes:
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response(400, _TEXT, b"bad request\n")
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if path not in ("/metrics", "/healthz"):
        return _response(404, _TEXT, b"not found\n")
    if method not in ("GET", "HEAD"):
        return _response(405, _TEXT, b"method not allowed\n", extra={"Allow": "GET, HEAD"})
    if path == "/metrics":
        code, ctype, body = 200, metrics.CONTENT_TYPE, metrics.render()
    else:
        code, payload = health.status()
        ctype, body = _JSON, json.dumps(payload).encode()
    return _response(code, ctype, body, head_only=method == "HEAD")


def _response(
    code: int,
    content_type: str,
    body: bytes,
    *,
    head_only: bool = False,
    extra: dict[str, str] | None = None,
) -> bytes:
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "Connection": "close",
        **(extra or {}),
    }
    lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
