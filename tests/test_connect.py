"""The one connection factory (consumer.db): every session named by its role, a database
that cannot be reached reported in one line on every path."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from consumer.db import (
    APPLICATION_NAME,
    ROLES,
    Bounds,
    Connector,
    aconnect,
    application_name,
    connect,
)
from consumer.errors import Unreachable, is_transient
from consumer.replay import EXIT_DIFFERS, run_replay
from tests.helpers import wait_for
from tests.logtools import mission

ENV = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "METRICS_PORT": "0"}
ONE_LINE = re.compile(r"cannot connect to the database: [^\n]+")
NAMED = re.compile(re.escape(APPLICATION_NAME) + r"/(\w+)")


def closed_port_dsn() -> str:
    """A local port nobody listens on: the connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2"


def test_every_role_has_its_name() -> None:
    assert application_name("listener") == "mana-ai-consumer/listener"
    for role in ROLES:
        kwargs = Bounds().kwargs(role)
        assert kwargs["application_name"] == f"{APPLICATION_NAME}/{role}"
    with pytest.raises(ValueError, match="unknown connection role"):
        application_name("pool")


def test_an_unreachable_database_is_one_line_on_the_blocking_path() -> None:
    with pytest.raises(Unreachable) as caught:
        connect(closed_port_dsn(), role="status")
    assert ONE_LINE.fullmatch(str(caught.value)), str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.anyio
async def test_an_unreachable_database_is_one_line_on_the_async_paths() -> None:
    dsn = closed_port_dsn()
    with pytest.raises(Unreachable) as caught:
        await aconnect(dsn, role="listener", autocommit=True)
    assert ONE_LINE.fullmatch(str(caught.value)), str(caught.value)
    # A running follower reconnects after it (a restarting server), as after any loss.
    assert is_transient(caught.value)
    started = time.monotonic()
    with pytest.raises(Unreachable) as pooled:
        async with Connector(dsn, Bounds()).open_pool("runner", max_size=2, open_within=1.0):
            pass
    # The pool only knows it timed out; the line carries libpq's reason.
    assert ONE_LINE.fullmatch(str(pooled.value)) and "refused" in str(pooled.value), pooled.value
    assert time.monotonic() - started < 10


def test_cli_replay_and_status_on_an_unreachable_database_exit_2_in_one_line() -> None:
    dsn = closed_port_dsn()
    for command in ("replay", "status"):
        result = subprocess.run(
            [sys.executable, "-m", "consumer", command, "--database-url", dsn],
            capture_output=True, text=True, timeout=60, env=ENV,
        )
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot connect to the database" in lines[0], result.stderr


@pytest.mark.anyio
async def test_configure_runs_on_every_async_connection(db: str) -> None:
    """The hook the benchmark times statements with: single connections and pooled ones."""
    seen: list[str] = []

    async def configure(conn: psycopg.AsyncConnection) -> None:
        # As the server reports it (no statement: a pool refuses a connection left in a
        # transaction by its configure hook).
        seen.append(str(conn.info.parameter_status("application_name")))

    connector = Connector(db, Bounds(), configure=configure)
    async with await connector.aconnect("work"):
        pass
    async with connector.open_pool("runner", max_size=2) as pool, pool.connection():
        pass
    assert seen == [application_name("work"), application_name("runner")]


def sessions(conn: psycopg.Connection, skip: set[int]) -> dict[int, str]:
    rows = conn.execute(
        """SELECT pid, application_name FROM pg_stat_activity
           WHERE datname = current_database() AND backend_type = 'client backend'
             AND pid <> pg_backend_pid()"""
    ).fetchall()
    return {pid: name for pid, name in rows if pid not in skip}


def test_every_connection_of_the_service_and_a_replay_shows_its_role(db: str) -> None:
    """pg_stat_activity, sampled while `consumer run` leads and a replay runs beside it:
    every session is `mana-ai-consumer/<role>`, and each role of the two shows up."""
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    seen: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    skip: set[int] = set()

    def sample() -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            while not stop.is_set():
                now = sessions(conn, skip)
                with lock:
                    seen.update(now)
                time.sleep(0.02)

    def roles_seen() -> set[str]:
        with lock:
            names = set(seen.values())
        return {m[1] for n in names if (m := NAMED.fullmatch(n))}

    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer", "run", "--database-url", db, "--max-sleep", "1"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with psycopg.connect(db) as blocker:
            skip.add(blocker.info.backend_pid)
            sampler.start()
            service = {"listener", "work", "scheduler", "runner"}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if service <= roles_seen():
                    break
                time.sleep(0.05)
            # The blocker keeps the replay's swap waiting (lock_timeout per try) long
            # enough for its sessions to be sampled; the replay then gives up.
            blocker.execute("SELECT count(*) FROM mana_ai.agent_snapshots")
            assert run_replay(db, lock_timeout=0.5, progress=lambda p: None) == EXIT_DIFFERS
    finally:
        stop.set()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        sampler.join(10)
    assert proc.returncode == 0, err
    names = set(seen.values())
    assert names and all(NAMED.fullmatch(n) for n in names), names
    roles = {m[1] for n in names if (m := NAMED.fullmatch(n))}
    assert {"listener", "work", "scheduler", "runner", "replay"} <= roles <= ROLES, roles


CHILD = """
import sys, psycopg
from consumer.db import Bounds
conn = psycopg.connect(sys.argv[1], autocommit=True, **Bounds().kwargs("work"))
print(conn.info.backend_pid, flush=True)
conn.execute("SELECT count(*) FROM public.gate")  # waits on the test's lock
"""


def test_a_killed_clients_session_waiting_on_a_lock_ends_within_seconds(db: str) -> None:
    """The session of a consumer killed while its statement waits on a lock must not live on
    (holding what it wrote) until the lock comes or the statement times out (30 s)."""
    with psycopg.connect(db, autocommit=True) as admin:
        admin.execute("CREATE TABLE public.gate (x int)")
        with psycopg.connect(db) as holder:
            holder.execute("LOCK TABLE public.gate IN ACCESS EXCLUSIVE MODE")
            child = subprocess.Popen([sys.executable, "-c", CHILD, db], stdout=subprocess.PIPE,
                                     text=True, env=ENV)
            assert child.stdout is not None
            pid = int(child.stdout.readline())

            def waiting() -> bool:
                row = admin.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                return row is not None and row[0] == "Lock"

            def gone() -> bool:
                return admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone() is None

            wait_for(waiting, 10, "the child waiting on the lock")
            child.kill()
            child.wait(10)
            wait_for(gone, 5, "the session of the killed client ended")
            holder.rollback()  # the lock was held all along
