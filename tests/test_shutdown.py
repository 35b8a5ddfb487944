"""SIGINT and SIGTERM stop `consumer run` without noise, a leader under traffic and a
standby waiting for the lock alike: exit 0, and nothing from psycopg or its pool
("query cancellation interrupted", "discarding closed connection", ...)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg

from tests.helpers import wait_for

ENV = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "METRICS_PORT": "0"}
ENV.pop("MANA_LLM_URL", None)


def _traffic(dsn: str, stop: threading.Event) -> None:
    """mana-sync-like writes, a few hundred a second, so the leader is often mid-pass."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        i = 0
        while not stop.is_set():
            i += 1
            with conn.transaction():
                conn.execute("SELECT set_config('app.current_user_id', 'u1', true)")
                conn.execute(
                    """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id,
                           op, data, client_id)
                       VALUES ('ai', 'aiMissions', %s, 'u1', 'update', %s::jsonb, 'phone')""",
                    (f"m{i % 40}", json.dumps({"title": f"t{i}", "state": "active",
                                                "nextRunAt": "2020-01-01T00:00:00Z"})),
                )
            time.sleep(0.003)


def _start(dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "consumer", "run", "--database-url", dsn],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(proc: subprocess.Popen[str], dsn: str, what: str, timeout: float = 30) -> None:
    """Until pg_stat_activity shows the process doing `what`: 'leading' or 'waiting'."""
    query = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        if what == "leading"
        else "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )

    def shows() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
        return bool(row and row[0])

    wait_for(shows, timeout, f"the consumer {what}", every=0.1)


NOISE = ("query cancellation interrupted", "discarding closed connection",
         "error ignored terminating", "Traceback", "WARNING psycopg", "ERROR")


def test_leader_and_standby_stop_cleanly_on_sigint_and_sigterm(db: str) -> None:
    stop = threading.Event()
    writer = threading.Thread(target=_traffic, args=(db, stop), daemon=True)
    writer.start()
    try:
        leader = _start(db)
        _wait_for(leader, db, "leading")
        standby = _start(db)
        _wait_for(standby, db, "waiting")
        time.sleep(2)  # the leader applies and decides under traffic
        standby.send_signal(signal.SIGINT)
        _, standby_err = standby.communicate(timeout=30)
        leader.send_signal(signal.SIGTERM)
        _, leader_err = leader.communicate(timeout=30)
    finally:
        stop.set()
        writer.join(5)
    for name, proc, err in (("standby", standby, standby_err), ("leader", leader, leader_err)):
        assert proc.returncode == 0, f"{name}: {err}"
        assert "stopping" in err, f"{name}: {err}"
        assert not [n for n in NOISE if n in err], f"{name}: {err}"


def test_replay_interrupted_stops_cleanly(db: str) -> None:
    """Ctrl-C (SIGINT) and SIGTERM in the middle of a replay: the live tables untouched,
    the shadow dropped, no warning."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                   data, client_id)
               SELECT 'ai', 'aiMissions', 'r' || (g % 20000), 'u' || (g % 7), 'update',
                      jsonb_build_object('title', g::text, 'state', 'active'), 'phone'
               FROM generate_series(1, 60000) AS g"""
        )
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "replay", "--database-url", db],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # Wait until it is building the shadow (its tables exist), then stop it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with psycopg.connect(db, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'mana_ai'"
                    " AND tablename LIKE '%shadow%'"
                ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the replay ended before it could be interrupted"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, out + err
        assert not [n for n in NOISE if n in err], err
        with psycopg.connect(db) as conn:
            left = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'mana_ai'"
                " AND tablename LIKE '%shadow%'"
            ).fetchone()
        assert left == (0,), "the shadow tables were left behind"
