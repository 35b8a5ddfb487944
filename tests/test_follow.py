"""The running consumer against a real server: follow, survive a killed connection, a
restarted consumer and a restarted server; nothing lost, snapshots equal the fold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import anyio
import psycopg
import pytest

from consumer.db import APPLICATION_NAME
from consumer.service import serve
from tests.helpers import (
    free_port,
    http_get,
    http_json,
    metric,
    settings,
    stop_process,
    wait_for,
    wait_for_async,
)
from tests.logtools import actual_snapshots, expected_snapshots, mission

pytestmark = pytest.mark.anyio


def converged(dsn: str) -> bool:
    return actual_snapshots(dsn) == expected_snapshots(dsn)


class Traffic:
    """A writer thread: `count` missions over a few records, as fast as it can."""

    def __init__(self, dsn: str, count: int, prefix: str = "m") -> None:
        self.dsn, self.count, self.prefix = dsn, count, prefix
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for i in range(self.count):
                    mission(conn, f"{self.prefix}{i % 13}", state="active", n=i, user=f"u{i % 3}")
                    time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        assert not self.errors, self.errors


def kill_consumer_sessions(dsn: str) -> set[int]:
    """Terminate every consumer session; return the pids terminated."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            """SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name LIKE %s""",
            (APPLICATION_NAME + "%",),
        ).fetchall()
    return {pid for pid, terminated in rows if terminated}


def live_purposes(dsn: str, killed: set[int]) -> set[str]:
    """The purposes ("listener", "work") of the consumer's sessions not among ``killed``."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            """SELECT application_name, pid FROM pg_stat_activity
               WHERE datname = current_database() AND application_name LIKE %s""",
            (APPLICATION_NAME + "/%",),
        ).fetchall()
    return {name.removeprefix(APPLICATION_NAME + "/") for name, pid in rows if pid not in killed}


async def test_follows_new_rows_within_milliseconds(db: str) -> None:
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(settings(db), ready=ready))
        await ready.wait()
        await anyio.sleep(0.5)
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "fast", state="active")
        started = time.monotonic()
        await wait_for_async(lambda: ("u1", "fast") in actual_snapshots(db)["missions"], 5, "fast")
        assert time.monotonic() - started < 2.0
        tg.cancel_scope.cancel()


async def test_killed_listener_during_traffic_loses_nothing(db: str) -> None:
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(settings(db), ready=ready))
        await ready.wait()
        reconnects = metric("mana_ai_listener_reconnects_total")
        killed: set[int] = set()
        with Traffic(db, 600):
            for _ in range(3):
                await anyio.sleep(0.3)
                # After a kill the consumer comes back after a jittered backoff (up to
                # reconnect_max), longer on a loaded machine: kill its new sessions, once
                # both are up, not the gap between them (or a killed one not yet gone).
                await wait_for_async(lambda: {"listener", "work"} <= live_purposes(db, killed),
                                     20, "new listener and work sessions")
                pids = await anyio.to_thread.run_sync(kill_consumer_sessions, db)
                assert pids, "no consumer session to kill"
                killed.update(pids)
        await wait_for_async(lambda: converged(db), 20, "snapshots == fold")
        assert metric("mana_ai_listener_reconnects_total") >= reconnects + 1
        tg.cancel_scope.cancel()


async def test_restarted_consumer_mid_stream_converges(db: str) -> None:
    with Traffic(db, 500):
        for _ in range(3):
            with anyio.move_on_after(0.4):
                await serve(settings(db))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(settings(db)))
        await wait_for_async(lambda: converged(db), 20, "snapshots == fold")
        tg.cancel_scope.cancel()


async def test_restarted_server_is_survived(db: str, pg_server) -> None:
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(settings(db), ready=ready))
        await ready.wait()
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "before", state="active")
        await anyio.to_thread.run_sync(pg_server.restart)
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "after", state="active")
        await wait_for_async(lambda: converged(db), 30, "snapshots == fold")
        assert {("u1", "before"), ("u1", "after")} <= set(actual_snapshots(db)["missions"])
        tg.cancel_scope.cancel()


def test_run_subprocess_serves_metrics_health_and_status(db: str) -> None:
    port = free_port()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "SYNC_DATABASE_URL": db}
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer", "run", "--no-scheduler", "--metrics-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        def healthy() -> bool:
            try:
                code, body = http_json(f"http://127.0.0.1:{port}/healthz")
            except OSError:
                return False
            return code == 200 and body["status"] == "ok"

        wait_for(healthy, 20, "/healthz 200", every=0.1)
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "seen", state="active")
        wait_for(lambda: ("u1", "seen") in actual_snapshots(db)["missions"], 10, "seen")
        # The counter is bumped after the commit that made the snapshot visible, so it may
        # lag the snapshot a moment: wait for the metric itself.
        wanted = ("mana_ai_snapshot_rows_applied_total 1.0", "mana_ai_listener_connected 1.0")

        def counted() -> bool:
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            return all(line in body.decode() for line in wanted)

        wait_for(counted, 10, f"/metrics showing {wanted}")
        out = subprocess.run(
            [sys.executable, "-m", "consumer", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["missions"] == 1 and report["agents"] == 0
        assert report["quarantined"] == 0 and isinstance(report["lag_rows"], int)
    finally:
        output = stop_process(proc)
    assert proc.returncode == 0, output
    assert "stopped" in output


def test_role_hidden_by_row_level_security_stops_with_one_line(db: str) -> None:
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(db, autocommit=True) as admin:
        mission(admin, "m1", state="active")
        admin.execute("DROP ROLE IF EXISTS consumer_no_bypass")
        admin.execute("CREATE ROLE consumer_no_bypass LOGIN")
        admin.execute(f'GRANT CREATE ON DATABASE "{admin.info.dbname}" TO consumer_no_bypass')
        admin.execute("GRANT USAGE ON SCHEMA mana_ai TO consumer_no_bypass")
        admin.execute("GRANT ALL ON ALL TABLES IN SCHEMA mana_ai TO consumer_no_bypass")
        admin.execute("GRANT SELECT ON public.sync_changes TO consumer_no_bypass")
        # Pretend the bootstrap ran, so the journal path meets the hidden row.
        admin.execute("UPDATE mana_ai.checkpoint SET bootstrapped = true")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "consumer", "run", "--no-scheduler", "--metrics-port", "0",
             "--database-url", make_conninfo(db, user="consumer_no_bypass")],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 2, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert "row level security" in last and "BYPASSRLS" in last
        assert "Traceback" not in out.stderr
    finally:
        with psycopg.connect(db, autocommit=True) as admin:
            admin.execute("DROP OWNED BY consumer_no_bypass")
            admin.execute("DROP ROLE consumer_no_bypass")


async def test_hot_standby_waits_then_takes_over(db: str) -> None:
    async with anyio.create_task_group() as tg:
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await serve(settings(db))

        tg.start_soon(leader)
        await anyio.sleep(0.5)
        tg.start_soon(lambda: serve(settings(db)))  # the standby: same database
        await anyio.sleep(0.5)
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "while-leader", state="active")
        await wait_for_async(
            lambda: ("u1", "while-leader") in actual_snapshots(db)["missions"], 5, "applied")
        leader_scope.cancel()  # the leader goes away; its advisory lock goes with it
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "after-takeover", state="active")
        await wait_for_async(
            lambda: ("u1", "after-takeover") in actual_snapshots(db)["missions"], 10, "applied")
        assert converged(db)
        tg.cancel_scope.cancel()  # neither raised CheckpointConflict: one applier at a time
