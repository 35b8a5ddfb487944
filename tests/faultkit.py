"""Shared kit for fault scenarios: a write storm in mana-sync's transaction shape, the
"nothing lost" checks (snapshots equal a fold of the log, `consumer replay --verify`
exits 0) and a `consumer run` subprocess that can be killed at will.

A scenario reads: start a storm, hurt the consumer or the server, stop the storm, then
`assert_nothing_lost(dsn)`.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

# The consumer child process is the benchmarks' too (bench/procs.py).
from bench.procs import ConsumerProcess, consumer_env  # noqa: F401 - the scenarios' kit

# How the consumer's sessions show in pg_stat_activity.application_name (see consumer.db).
from consumer.db import application_name
from tests.helpers import wait_for
from tests.logtools import INSERT, actual_snapshots, expected_snapshots

LISTENER_APP = application_name("listener")
WORK_APP = application_name("work")


# --------------------------------------------------------------------------- the storm


class WriteStorm:
    """`writers` threads, each committing transactions the way mana-sync does: BEGIN,
    `set_config('app.current_user_id', user, true)`, one to three inserts of that user's
    missions or agents, COMMIT. The writers share a small pool of records, so rows of
    different writers race on the same fields. A writer whose connection is lost (server
    restart, terminated backend) reconnects and goes on; what it did not commit is simply
    not in the log.

    `rows_per_writer` bounds the storm (None: until `stop()`); `pause` is the sleep
    between a writer's transactions.
    """

    def __init__(
        self,
        dsn: str,
        *,
        writers: int = 2,
        rows_per_writer: int | None = None,
        records: int = 12,
        users: int = 3,
        pause: float = 0.003,
        seed: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.rows_per_writer = rows_per_writer
        self.records, self.users, self.pause = records, users, pause
        self.seed = random.randrange(2**32) if seed is None else seed
        self.committed = 0  # transactions committed, all writers
        self.rows = 0  # rows committed, all writers
        self.reconnects = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True, name=f"storm-{i}")
            for i in range(writers)
        ]

    # A transaction of one user: mostly missions, sometimes an agent; some fields stamped.
    def _transaction(self, conn: psycopg.Connection, rng: random.Random, n: int) -> int:
        user = f"u{rng.randrange(self.users)}"
        count = rng.randint(1, 3)
        with conn.transaction():
            conn.execute("SELECT set_config('app.current_user_id', %s, true)", (user,))
            for _ in range(count):
                table = "agents" if rng.random() < 0.2 else "aiMissions"
                record = f"{'a' if table == 'agents' else 'm'}{rng.randrange(self.records)}"
                op = "delete" if rng.random() < 0.03 else "update"
                data: dict[str, Any] = {"n": n, "state": rng.choice(["active", "paused"])}
                meta: dict[str, Any] = {}
                if rng.random() < 0.5:
                    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                    meta["state"] = {"at": at, "actor": "storm"} if rng.random() < 0.5 else at
                conn.execute(
                    INSERT,
                    (str(uuid.uuid4()), table, record, user, op, json.dumps(data),
                     json.dumps(meta), None),
                )
        return count

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 31 + index)
        n = 0
        conn: psycopg.Connection | None = None
        try:
            while not self._stop.is_set():
                if self.rows_per_writer is not None and n >= self.rows_per_writer:
                    return
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                    count = self._transaction(conn, rng, n)
                except psycopg.OperationalError:
                    # Lost connection (restart, terminate): the transaction did not commit,
                    # or did and we cannot tell; either way the log says what happened.
                    with self._lock:
                        self.reconnects += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.1)
                    continue
                n += count
                with self._lock:
                    self.committed += 1
                    self.rows += count
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)
        finally:
            if conn is not None:
                conn.close()

    def start(self) -> WriteStorm:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a storm writer hangs"
        assert not self.errors, self.errors

    def __enter__(self) -> WriteStorm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- nothing lost


def snapshots_equal_fold(dsn: str) -> bool:
    """The snapshot tables hold exactly the fold of the whole log (consumer.merge.fold of
    every row that validates), record by record."""
    return actual_snapshots(dsn) == expected_snapshots(dsn)


def fold_difference(dsn: str) -> str:
    """A short description of how the snapshots differ from the fold (for messages)."""
    actual, expected = actual_snapshots(dsn), expected_snapshots(dsn)
    lines = []
    for kind in ("missions", "agents"):
        a, e = actual[kind], expected[kind]
        for key in sorted(a.keys() | e.keys()):
            if a.get(key) != e.get(key):
                lines.append(f"{kind} {key}: live={a.get(key)!r} fold={e.get(key)!r}")
    return "\n".join(lines[:10]) or "no difference"


def wait_converged(dsn: str, within: float = 30.0) -> float:
    """Wait until the snapshots equal the fold of the log; returns the seconds it took."""
    try:
        return wait_for(lambda: snapshots_equal_fold(dsn), within, "snapshots == fold")
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{fold_difference(dsn)}") from None


def replay_verify(dsn: str, args: Sequence[str] = (), timeout: float = 120) -> str:
    """Run `consumer replay --verify [args]`; assert exit 0 (live snapshots equal the
    log's fold as replay computes it). Returns its output. Give it the --max-row-bytes the
    consumer ran with."""
    out = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--verify", *args],
        env=consumer_env(dsn),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (
        f"replay --verify exited {out.returncode}:\n{out.stdout}{out.stderr}"
    )
    return out.stdout


def assert_nothing_lost(dsn: str, within: float = 30.0) -> None:
    """Both checks every fault scenario ends with."""
    wait_converged(dsn, within)
    replay_verify(dsn)


def journal_applied(dsn: str) -> bool:
    """Lag 0 as the database sees it: every journal row committed so far is below the
    checkpoint (nothing is in flight, so the watermark is the next xid)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            """SELECT NOT EXISTS (SELECT 1 FROM mana_ai.journal j, mana_ai.checkpoint c
                                   WHERE c.name = 'projection' AND j.xid >= c.applied_below)"""
        ).fetchone()
    return bool(row and row[0])


# --------------------------------------------------------------------------- processes


def terminate_backends(dsn: str, application_name: str) -> int:
    """pg_terminate_backend on this database's sessions with that application_name;
    returns how many."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = %s""",
            (application_name,),
        ).fetchall()
    return len(rows)


def sessions(dsn: str, application_name: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = %s""",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


def advisory_lock(dsn: str, key: int) -> list[tuple[int, str, bool, str]]:
    """(pid, mode, granted, application_name) of every session of this database holding or
    waiting for the advisory lock `key` (consumer.locks), holders first."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        return admin.execute(
            """SELECT l.pid, l.mode, l.granted, coalesce(a.application_name, '')
               FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
               WHERE l.locktype = 'advisory' AND l.objsubid = 1
                 AND l.database = (SELECT oid FROM pg_database
                                   WHERE datname = current_database())
                 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
               ORDER BY l.granted DESC, l.pid""",
            (key,),
        ).fetchall()


def session_pids(dsn: str, application_name: str) -> list[int]:
    """Backend pids of this database's sessions with that application_name."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            """SELECT pid FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = %s ORDER BY pid""",
            (application_name,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def write_probe(dsn: str, record_id: str, within: float = 30.0) -> None:
    """Commit one mission row, retrying while the server is not accepting connections."""
    deadline = time.monotonic() + within
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    INSERT,
                    (str(uuid.uuid4()), "aiMissions", record_id, "u0", "update",
                     json.dumps({"probe": True}), "{}", None),
                )
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def applied(dsn: str, record_id: str) -> bool:
    """Whether the mission `record_id` of user u0 is in the snapshot (False while the
    server cannot be reached)."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT 1 FROM mana_ai.mission_snapshots WHERE user_id = 'u0' "
                "AND mission_id = %s",
                (record_id,),
            ).fetchone()
    except psycopg.OperationalError:
        return False
    return row is not None


def reconnect_after_restart(dsn: str, restart: Callable[[], None], within: float = 60.0) -> float:
    """Restart the server with `restart` (which returns once it accepts connections, as
    `pg_ctl -w restart` does) under a running consumer; returns the seconds from then to
    lag 0: a row committed right after the server came up is in the snapshot (a pass
    applies everything committed before it, so every older row is applied too)."""
    restart()
    up = time.monotonic()
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    write_probe(dsn, probe)
    while not applied(dsn, probe):
        if time.monotonic() - up > within:
            raise AssertionError(f"lag not back to 0 within {within:g} s of the restart")
        time.sleep(0.02)
    return time.monotonic() - up
