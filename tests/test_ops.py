"""ops/: what can be checked without a container engine.

- ops/roles.sql applied to the test server, then `consumer migrate`, `consumer run` and
  `consumer replay --verify` as mana_ai_consumer, and a writer as mana_sync (mana-sync's
  role): rows are applied, a due mission is planned and its iteration written back through
  mana_ai_writeback, and the roles hold exactly the privileges the file says.

The checks of ops/ files that need no database are in tests/unit/test_ops_files.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from consumer.demo_planner import DemoPlanner
from consumer.planner import KEY_ENV, URL_ENV

OPS = Path(__file__).resolve().parent.parent / "ops"
ENV = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "METRICS_PORT": "0"}


def _as(dsn: str, role: str) -> str:
    return make_conninfo(dsn, user=role)


def _apply_roles(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute((OPS / "roles.sql").read_text())


def _write(conn: psycopg.Connection, user: str, table: str, rid: str, data: dict) -> None:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with conn.transaction():
        conn.execute("SELECT set_config('app.current_user_id', %s, true)", (user,))
        conn.execute(
            """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                   data, field_meta, client_id)
               VALUES ('ai', %s, %s, %s, 'update', %s::jsonb, %s::jsonb, 'phone')""",
            (table, rid, user, json.dumps(data), json.dumps({k: now for k in data})),
        )


def test_roles_sql_privileges(db: str) -> None:
    _apply_roles(db)
    _apply_roles(db)  # idempotent: an upgrade runs it again
    with psycopg.connect(db) as conn:
        roles = {
            name: (login, bypass)
            for name, login, bypass in conn.execute(
                "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles"
                " WHERE rolname IN ('mana_sync', 'mana_ai_consumer', 'mana_ai_writeback')"
            )
        }
        assert roles == {
            "mana_sync": (True, False),
            "mana_ai_consumer": (True, True),
            "mana_ai_writeback": (False, False),
        }

        def priv(role: str, what: str) -> bool:
            row = conn.execute(
                "SELECT has_table_privilege(%s, 'public.sync_changes', %s)", (role, what)
            ).fetchone()
            return bool(row and row[0])

        assert priv("mana_ai_consumer", "SELECT") and priv("mana_ai_consumer", "TRIGGER")
        # The consumer never writes the log as itself, not even through its membership.
        for what in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not priv("mana_ai_consumer", what), what
        assert priv("mana_ai_writeback", "INSERT")
        assert not priv("mana_ai_writeback", "SELECT")
        assert priv("mana_sync", "INSERT") and not priv("mana_sync", "TRIGGER")
        row = conn.execute(
            "SELECT pg_has_role('mana_ai_consumer', 'mana_ai_writeback', 'SET'),"
            "       pg_has_role('mana_ai_consumer', 'mana_ai_writeback', 'USAGE')"
        ).fetchone()
        assert row == (True, False)
        # Everything in mana_ai now belongs to the consumer (replay renames its tables).
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
            " WHERE relnamespace = 'mana_ai'::regnamespace"
        ).fetchall()
        assert owners == [("mana_ai_consumer",)]


def test_consumer_and_writer_run_as_the_roles(db: str) -> None:
    _apply_roles(db)
    consumer_dsn, sync_dsn = _as(db, "mana_ai_consumer"), _as(db, "mana_sync")
    migrate = subprocess.run(
        [sys.executable, "-m", "consumer", "migrate", "--database-url", consumer_dsn],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "WARNING" not in migrate.stderr, migrate.stderr

    due = (datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    with psycopg.connect(sync_dsn, autocommit=True) as sync:
        _write(sync, "ada", "agents", "a1", {"name": "Ada", "state": "active"})
        _write(sync, "ada", "aiMissions", "m1", {
            "title": "Plan", "state": "active", "agentId": "a1", "nextRunAt": due,
            "iterations": [],
        })
        with DemoPlanner(delay=0.0) as planner:
            env = {**ENV, URL_ENV: planner.url, KEY_ENV: "k"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--database-url", consumer_dsn],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            try:
                # mana-sync keeps writing while the consumer runs.
                for i in range(20):
                    _write(sync, "bob", "aiMissions", f"b{i}", {"title": f"t{i}"})
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and proc.poll() is None:
                    with psycopg.connect(db) as conn:
                        row = conn.execute(
                            "SELECT count(*) FILTER (WHERE user_id = 'bob'),"
                            "  max(jsonb_array_length(record->'iterations'))"
                            "    FILTER (WHERE mission_id = 'm1')"
                            " FROM mana_ai.mission_snapshots"
                        ).fetchone()
                    assert row is not None
                    if row[0] == 20 and (row[1] or 0) >= 1:
                        break
                    time.sleep(0.2)
            finally:
                proc.terminate()
                _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # Every row applied, and the due mission's iteration written back through
    # mana_ai_writeback came round into its snapshot.
    assert row == (20, 1), err
    assert not re.search(r"WARNING|ERROR|Traceback", err), err
    with psycopg.connect(db) as conn:
        written = conn.execute(
            "SELECT user_id, origin FROM public.sync_changes"
            " WHERE record_id = 'm1' AND client_id = 'mana-ai-runner'"
        ).fetchall()
    assert written == [("ada", "agent")]

    verify = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--verify", "--database-url",
         consumer_dsn],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
