"""Helpers the tests share: one polling wait, metric reads, instants as clients write them,
ports and HTTP, the CLI, service settings, reads of snapshots and of the schema catalog,
what a replay must not leave behind, a connection pool, the projection driven once, and
the planner stub's fixtures.

Fixtures are in conftest.py (but for the planner stub's, which a module makes here);
writing log rows and folding the log in logtools.py; fault scenarios (storms, "nothing
lost", killable processes) in faultkit.py.
"""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from consumer import eventloop, metrics
from consumer.config import Settings
from consumer.db import Bounds, Connector, aconnect
from consumer.instants import iso
from consumer.planner import Planner, PlannerConfig
from consumer.projection import Projector
from tests.planner_stub import PlannerStub

# --------------------------------------------------------------------------- waiting


def wait_for(
    pred: Callable[[], object], timeout: float = 15.0, what: str = "the condition",
    *, every: float = 0.05,
) -> float:
    """Poll `pred` until it is true; returns the seconds that took. After `timeout` s an
    AssertionError names `what` (so a failure says what never happened)."""
    started = time.monotonic()
    while not pred():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        time.sleep(every)
    return time.monotonic() - started


async def wait_for_async(
    pred: Callable[[], object | Awaitable[object]],
    timeout: float = 15.0,  # noqa: ASYNC109 - the same call as wait_for; failures name `what`
    what: str = "the condition",
    *,
    every: float = 0.02,
) -> float:
    """`wait_for` inside a task: it sleeps with anyio, so the event loop (and the code
    under test on it) runs between polls. `pred` may be a coroutine function."""
    started = time.monotonic()
    while True:
        result = pred()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout:g} s")
        await anyio.sleep(every)


# --------------------------------------------------------------------------- metrics and time


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of this process's metrics registry (0 when it was never observed)."""
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def at(seconds: float) -> str:
    """The instant `seconds` from now as clients write nextRunAt (ms precision, 'Z')."""
    return iso(datetime.now(UTC) + timedelta(seconds=seconds))


# --------------------------------------------------------------------------- ports, HTTP, CLI


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for /metrics of a process under test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """Status and body; an HTTP error status is returned, not raised (OSError still is)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def http_json(url: str, timeout: float = 5) -> tuple[int, dict[str, Any]]:
    status, body = http_get(url, timeout)
    return status, json.loads(body)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m consumer ARGS` in a subprocess; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def stop_process(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    """SIGTERM (a graceful stop), SIGKILL after `timeout` s; the process's output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


# --------------------------------------------------------------------------- database reads


def snapshot(dsn: str, mission_id: str) -> dict[str, Any]:
    """The mission's snapshot record (it must exist)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT record FROM mana_ai.mission_snapshots WHERE mission_id = %s", (mission_id,)
        ).fetchone()
    assert row is not None, f"no snapshot of mission {mission_id}"
    return row[0]


def checkpoint_version(dsn: str) -> int:
    """The projection checkpoint's version: one more with every write of the checkpoint."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT version FROM mana_ai.checkpoint WHERE name = 'projection'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def catalog(dsn: str) -> dict[str, object]:
    """Everything schema-shaped in mana_ai and public.sync_changes, as comparable data."""
    with psycopg.connect(dsn) as conn:
        q = conn.execute
        columns = q(
            """SELECT table_schema, table_name, column_name, data_type, is_nullable,
                      column_default
               FROM information_schema.columns
               WHERE table_schema = 'mana_ai' OR (table_schema = 'public'
                     AND table_name = 'sync_changes')
               ORDER BY 1, 2, ordinal_position"""
        ).fetchall()
        indexes = q(
            """SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
               WHERE schemaname = 'mana_ai' OR tablename = 'sync_changes' ORDER BY 1, 2, 3"""
        ).fetchall()
        constraints = q(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace IN ('mana_ai'::regnamespace,
                 'public'::regnamespace) ORDER BY 1, 2"""
        ).fetchall()
        policies = q(
            """SELECT schemaname, tablename, policyname, cmd, qual, with_check FROM pg_policies
               ORDER BY 1, 2, 3"""
        ).fetchall()
        rls = q(
            """SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity
               FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace IN
                 ('mana_ai'::regnamespace, 'public'::regnamespace) ORDER BY 1"""
        ).fetchall()
        triggers = q(
            """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
               WHERE NOT tgisinternal ORDER BY 1, 2"""
        ).fetchall()
    return {
        "columns": columns, "indexes": indexes, "constraints": constraints,
        "policies": policies, "rls": rls, "triggers": triggers,
    }


def leftovers(dsn: str) -> list:
    """What an interrupted or finished replay must not leave: shadow or retired tables,
    journal holds."""
    from consumer.replay_store import RETIRED, SHADOW  # here: conftest imports this module

    with psycopg.connect(dsn) as conn:
        shadows = conn.execute(
            "SELECT to_regclass(t) FROM unnest(%s::text[]) t",
            ([f"mana_ai.{t.missions}" for t in (SHADOW, RETIRED)]
             + [f"mana_ai.{t.agents}" for t in (SHADOW, RETIRED)]
             + [f"mana_ai.{t.clocks}" for t in (SHADOW, RETIRED)]
             + [f"mana_ai.{t.due}" for t in (SHADOW, RETIRED)],),
        ).fetchall()
        holds = conn.execute("SELECT name FROM mana_ai.replay_hold").fetchall()
    return [s for (s,) in shadows if s is not None] + holds


# --------------------------------------------------------------------------- pool, projection


@asynccontextmanager
async def open_pool(dsn: str, max_size: int = 4) -> AsyncIterator[AsyncConnectionPool]:
    """An open connection pool as the service's work pool is, for the test's duration."""
    async with Connector(dsn, Bounds()).open_pool("test", max_size=max_size) as pool:
        yield pool


QUIET = {"progress": lambda p: None}  # run_replay keyword: no progress output


def project(dsn: str, projector: Projector | None = None) -> Projector:
    """Bootstrap and catch up once (in a thread of its own: callers may be in a loop)."""
    projector = projector or Projector()
    errors: list[BaseException] = []

    async def go() -> None:
        async with await aconnect(dsn, role="test") as conn:
            await projector.bootstrap(conn)
            await projector.catch_up(conn)

    def target() -> None:
        try:
            eventloop.run(go)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return projector


def settings(dsn: str, **overrides: Any) -> Settings:
    """Service settings for a consumer run inside the test: no /metrics port, no scheduler,
    and short probes and polls, so a fault shows (and heals) in seconds."""
    base: dict[str, Any] = dict(
        database_url=dsn,
        metrics_port=0,
        scheduler=False,
        idle_probe=0.5,
        safety_poll=5.0,
        reconnect_max=1.0,
    )
    return Settings(**(base | overrides))


# --------------------------------------------------------------------------- the planner stub

PLANNER_KEY = "sk-test-0123456789abcdef"  # the planner's API key in tests: never in a message


def planner_fixtures(plan: dict[str, Any]) -> tuple[Any, Any]:
    """The `stub` and `planner` fixtures of a test module whose planner answers `plan`:

        stub, planner = planner_fixtures(PLAN)

    `stub` is a PlannerStub replying with the plan as its content; `planner` a client of
    it (key PLANNER_KEY, 5 s timeout), open for the test.
    """

    @pytest.fixture
    def stub() -> Iterator[PlannerStub]:
        with PlannerStub(json.dumps(plan)) as s:
            yield s

    @pytest.fixture
    async def planner(stub: PlannerStub) -> AsyncIterator[Planner]:
        async with Planner(PlannerConfig(base_url=stub.url, api_key=PLANNER_KEY,
                                         timeout=5)) as p:
            yield p

    return stub, planner
