"""consumer.metrics names, consumer.health, and the /metrics + /healthz server over real sockets."""

from __future__ import annotations

import json
import math
import re
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from consumer import eventloop, httpserver, metrics
from consumer.health import Health
from consumer.httpserver import serve_http


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "asyncio", eventloop.backend_options()


COUNTERS = [
    "mana_ai_ticks_total",
    "mana_ai_plans_produced_total",
    "mana_ai_plans_written_back_total",
    "mana_ai_parse_failures_total",
    "mana_ai_mission_errors_total",
    "mana_ai_snapshots_new_total",
    "mana_ai_snapshots_updated_total",
    "mana_ai_snapshot_rows_applied_total",
    "mana_ai_agent_decisions_total",
    "mana_ai_quarantined_rows_total",
    "mana_ai_listener_reconnects_total",
    "mana_ai_bad_stamps_total",
]
GAUGES = [
    "mana_ai_apply_lag_seconds",
    "mana_ai_checkpoint_age_seconds",
    "mana_ai_listener_connected",
    "mana_ai_leader",
    "mana_ai_runs_in_flight",
]
HISTOGRAMS = [
    "mana_ai_tick_duration_seconds",
    "mana_ai_planner_request_duration_seconds",
    "mana_ai_apply_batch_seconds",
    "mana_ai_decision_lateness_seconds",
]


def _touch_all() -> None:
    metrics.TICKS.inc()
    metrics.PLANS_PRODUCED.inc()
    metrics.PLANS_WRITTEN_BACK.inc()
    metrics.PARSE_FAILURES.inc()
    metrics.MISSION_ERRORS.inc()
    metrics.SNAPSHOTS_NEW.inc()
    metrics.SNAPSHOTS_UPDATED.inc()
    metrics.SNAPSHOT_ROWS_APPLIED.inc(3)
    metrics.AGENT_DECISIONS.labels(decision="ran").inc()
    metrics.count_quarantined("payload_too_large: 2.1 MiB")
    metrics.LISTENER_RECONNECTS.inc()
    metrics.BAD_STAMPS.inc()
    metrics.APPLY_LAG.set(0)
    metrics.CHECKPOINT_AGE.set(1.5)
    metrics.LISTENER_CONNECTED.set(1)
    metrics.LEADER.set(1)
    metrics.RUNS_IN_FLIGHT.inc()
    metrics.TICK_DURATION.observe(0.02)
    metrics.PLANNER_REQUEST_DURATION.observe(1.2)
    metrics.APPLY_BATCH.observe(0.0007)
    metrics.DECISION_LATENESS.observe(0.3)


def _assert_exact_names(text: str) -> None:
    for name in COUNTERS + GAUGES:
        # A sample line with exactly this name (no extra suffix), labelled or not.
        assert re.search(rf"^{name}(\{{| )", text, re.M), name
    for name in COUNTERS:
        assert re.search(rf"^# TYPE {name.removesuffix('_total')}(_total)? counter$", text, re.M)
    for name in GAUGES:
        assert f"# TYPE {name} gauge\n" in text, name
    for name in HISTOGRAMS:
        assert f"# TYPE {name} histogram\n" in text, name
        assert re.search(rf"^{name}_bucket\{{le=", text, re.M), name


def test_render_exposes_exact_names() -> None:
    _touch_all()
    text = metrics.render().decode()
    _assert_exact_names(text)
    assert 'mana_ai_agent_decisions_total{decision="ran"}' in text
    assert 'mana_ai_quarantined_rows_total{reason="payload_too_large"}' in text
    # Nothing doubled by our own suffixing.
    assert "_total_total" not in text
    # Fine-grained low end for batch apply.
    assert 'mana_ai_apply_batch_seconds_bucket{le="0.0005"}' in text


def test_registry_is_private() -> None:
    from prometheus_client import REGISTRY as DEFAULT

    assert metrics.REGISTRY is not DEFAULT
    assert DEFAULT.get_sample_value("mana_ai_ticks_total") is None


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("payload_too_large: 2.1 MiB", "payload_too_large"),
        ("Invalid JSON in data", "invalid"),
        ("field_meta:not an object", "field_meta"),
        ("   ", "other"),
        ("", "other"),
        ("é!!", "other"),
        ("x" * 100, "x" * 32),
    ],
)
def test_quarantine_category(reason: str, category: str) -> None:
    assert metrics.quarantine_category(reason) == category


# --- Health ---


def test_health_ok() -> None:
    code, body = Health(listener_connected=True, lag_seconds=1.0).status()
    assert code == 200
    assert body["status"] == "ok"
    assert body["lag_seconds"] == 1.0


def test_health_disconnected() -> None:
    code, body = Health(listener_connected=False, last_error="conn refused").status()
    assert code == 503
    assert body["status"] == "unavailable"
    assert body["reason"] == "listener disconnected"
    assert body["last_error"] == "conn refused"


def test_health_starts_unavailable() -> None:
    assert Health().status()[0] == 503


def test_health_lag() -> None:
    code, body = Health(listener_connected=True, lag_seconds=45.23).status()
    assert (code, body["reason"]) == (503, "apply lag 45.2 s exceeds 30 s")
    # At the threshold is already too much; NaN is unhealthy and reported as null.
    assert Health(listener_connected=True, lag_seconds=30.0).status()[0] == 503
    code, body = Health(listener_connected=True, lag_seconds=math.nan).status()
    assert code == 503 and body["lag_seconds"] is None
    json.dumps(body, allow_nan=False)


# --- HTTP server ---


@asynccontextmanager
async def running(health: Health) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve_http, 0, health)
        yield port
        tg.cancel_scope.cancel()


async def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read to EOF (the server closes), split the response."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if data:
            await stream.send(data)
        chunks = []
        with anyio.fail_after(5):
            while True:
                try:
                    chunks.append(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@pytest.mark.anyio
async def test_metrics_endpoint_with_urllib() -> None:
    _touch_all()
    async with running(Health(listener_connected=True)) as port:

        def fetch() -> tuple[int, str, str]:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()

        status, ctype, text = await anyio.to_thread.run_sync(fetch)
    assert status == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    _assert_exact_names(text)


@pytest.mark.anyio
async def test_healthz() -> None:
    health = Health(listener_connected=True, lag_seconds=0.5)
    async with running(health) as port:
        code, headers, body = await raw_request(port, get("/healthz"))
        assert code == 200
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)
        assert json.loads(body)["status"] == "ok"

        health.listener_connected = False
        code, _, body = await raw_request(port, get("/healthz"))
        assert code == 503
        assert json.loads(body)["reason"] == "listener disconnected"

        health.listener_connected = True
        health.lag_seconds = 45.2
        code, _, body = await raw_request(port, get("/healthz?verbose=1"))
        assert code == 503
        assert json.loads(body) == {
            "status": "unavailable",
            "reason": "apply lag 45.2 s exceeds 30 s",
            "role": "starting",
            "listener_connected": True,
            "lag_seconds": 45.2,
            "last_cycle_seconds_ago": {},
            "last_error": None,
        }


@pytest.mark.anyio
async def test_healthz_reports_a_loop_that_stopped_making_progress() -> None:
    now = [100.0]
    health = Health(listener_connected=True, role="leader", clock=lambda: now[0])
    health.expect("apply", 10.0)
    health.expect("scheduler", 70.0)
    async with running(health) as port:
        now[0] += 9.0
        code, _, body = await raw_request(port, get("/healthz"))
        payload = json.loads(body)
        assert code == 200 and payload["role"] == "leader"
        assert payload["last_cycle_seconds_ago"] == {"apply": 9.0, "scheduler": 9.0}

        now[0] += 2.0  # the apply loop is now 11 s past its last cycle: stalled
        code, _, body = await raw_request(port, get("/healthz"))
        assert code == 503
        assert json.loads(body)["reason"] == (
            "apply loop has not completed a cycle for 11.0 s (bound 10 s)"
        )

        health.beat("apply")  # progress again: healthy
        assert (await raw_request(port, get("/healthz")))[0] == 200

        health.release("scheduler")  # a standby does not decide: no bound on it
        health.role = "standby"
        now[0] += 69.0
        health.beat("apply")
        code, _, body = await raw_request(port, get("/healthz"))
        assert code == 200 and json.loads(body)["role"] == "standby"


@pytest.mark.anyio
async def test_other_paths_and_methods() -> None:
    async with running(Health(listener_connected=True)) as port:
        assert (await raw_request(port, get("/")))[0] == 404
        assert (await raw_request(port, get("/metricsx")))[0] == 404
        code, headers, _ = await raw_request(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (code, headers["allow"]) == (405, "GET, HEAD")
        code, headers, body = await raw_request(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert code == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.anyio
async def test_bad_clients_do_not_kill_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "REQUEST_TIMEOUT_S", 0.3)
    async with running(Health(listener_connected=True)) as port:
        assert (await raw_request(port, b"\x00\x01garbage\r\n\r\n"))[0] == 400
        assert (await raw_request(port, b"GET /healthz\r\n\r\n"))[0] == 400  # no version
        too_big = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await raw_request(port, too_big))[0] == 431

        # Connect and close without a byte.
        stream = await anyio.connect_tcp("127.0.0.1", port)
        await stream.aclose()

        # A silent client is dropped at the deadline, and does not block others meanwhile.
        async with await anyio.connect_tcp("127.0.0.1", port) as silent:
            await silent.send(b"GET /heal")  # an unfinished request line
            assert (await raw_request(port, get("/healthz")))[0] == 200
            with anyio.fail_after(3):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await silent.receive()

        assert (await raw_request(port, get("/healthz")))[0] == 200


@pytest.mark.anyio
async def test_started_reports_bound_port() -> None:
    async with running(Health()) as port:
        assert 0 < port < 65536
