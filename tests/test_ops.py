"""ops/: what can be checked without a container engine.

- ops/roles.sql applied to the test server, then `consumer migrate`, `consumer run` and
  `consumer replay --verify` as mana_ai_consumer, and a writer as mana_sync (mana-sync's
  role): rows are applied, a due mission is planned and its iteration written back through
  mana_ai_writeback, and the roles hold exactly the privileges the file says.
- compose.yaml parses, and its services, ports, commands and variables agree with the code.
- the Grafana dashboard is valid JSON and queries only metrics the consumer exports.
- the Dockerfile is slim, runs as a non-root user and checks /healthz.
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
import yaml
from psycopg.conninfo import make_conninfo

from consumer import metrics
from consumer.cli import build_parser
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


def test_compose_agrees_with_the_code() -> None:
    compose = yaml.safe_load((OPS / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "roles", "jaeger", "consumer", "standby", "writer",
            "planner"} <= set(services)
    jaeger_ports = {str(p).split(":")[-1] for p in services["jaeger"]["ports"]}
    assert {"4317", "4318", "16686"} <= jaeger_ports

    commands = {name: svc.get("command") for name, svc in services.items()}
    parser = build_parser()
    # The consumer's commands parse with the real CLI.
    for name in ("migrate", "consumer", "standby"):
        parser.parse_args(list(commands[name]))
    assert "--with-sync-schema" in commands["migrate"]

    for name in ("consumer", "standby"):
        env = services[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env["OTEL_TRACES_EXPORTER"] == "otlp"
        assert env[URL_ENV].startswith("http://planner:8080")
        assert env["SYNC_DATABASE_URL"].startswith("postgresql://mana_ai_consumer:")
        assert "@postgres:5432/" in env["SYNC_DATABASE_URL"]
        assert env["METRICS_PORT"] == "9464"
        deps = services[name]["depends_on"]
        assert deps["roles"]["condition"] == "service_completed_successfully"
    assert services["writer"]["environment"]["SYNC_DATABASE_URL"].startswith(
        "postgresql://mana_sync:"
    )
    # The planner and writer modules the stack starts exist and take those flags.
    assert services["planner"]["entrypoint"] == ["python", "-m", "consumer.demo_planner"]
    assert services["writer"]["entrypoint"] == ["python", "-m", "consumer.demo_writer"]
    from consumer import demo_planner, demo_writer

    planner_args = demo_planner.build_parser().parse_args(commands["planner"])
    assert planner_args.host == "0.0.0.0" and planner_args.port == 8080
    demo_writer.build_parser().parse_args(commands["writer"])
    # The Dockerfile's health check and the leader's published port use METRICS_PORT.
    assert "9464:9464" in services["consumer"]["ports"]
    # roles.sql is what the roles step applies.
    assert any("roles.sql" in str(v) for v in services["roles"].get("volumes", []))


def test_grafana_dashboard_uses_our_metrics() -> None:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    assert exprs
    names = set(re.findall(r"\bmana_ai_[a-z_]+", " ".join(exprs)))
    exported = set()
    for metric in metrics.REGISTRY.collect():
        for sample in metric.samples:
            exported.add(sample.name)
    # Histograms and counters expose suffixed samples only once observed: allow the base.
    known = exported | {m.name for m in metrics.REGISTRY.collect()}
    known |= {f"{n}_total" for n in known} | {f"{n}_{s}" for n in known
                                              for s in ("bucket", "sum", "count")}
    assert names <= known, names - known
    for wanted in ("mana_ai_apply_lag_seconds", "mana_ai_snapshot_rows_applied_total",
                   "mana_ai_agent_decisions_total", "mana_ai_quarantined_rows_total",
                   "mana_ai_checkpoint_age_seconds"):
        assert wanted in names, wanted


def test_dockerfile_is_slim_non_root_and_health_checked() -> None:
    text = (OPS / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all("slim" in f for f in froms), froms
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r"^HEALTHCHECK\b.*", text, re.M)
    assert "/healthz" in text and "9464" in text
    assert re.search(r'^ENTRYPOINT \["consumer"\]', text, re.M)
