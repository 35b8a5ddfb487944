"""Migrations against a real server: exact seed schema, sync_changes facts, idempotence,
privilege errors and `consumer migrate` applying them (the CLI's failures without a server
are in tests/unit/test_cli.py)."""

from __future__ import annotations

import psycopg
import pytest

from consumer.errors import PrivilegeError
from consumer.migrate import discover, migrate
from tests.helpers import catalog, run_cli

SEED_COLUMNS = {
    "mission_snapshots": [
        ("user_id", "text", "NO", None),
        ("mission_id", "text", "NO", None),
        ("record", "jsonb", "NO", None),
        ("last_applied_at", "timestamp with time zone", "NO", "'1970-01-01 00:00:00+00'::timestamp with time zone"),
        ("updated_at", "timestamp with time zone", "NO", "now()"),
    ],
    "agent_snapshots": [
        ("user_id", "text", "NO", None),
        ("agent_id", "text", "NO", None),
        ("record", "jsonb", "NO", None),
        ("last_applied_at", "timestamp with time zone", "NO", "'1970-01-01 00:00:00+00'::timestamp with time zone"),
        ("updated_at", "timestamp with time zone", "NO", "now()"),
    ],
    "decrypt_audit": [
        ("id", "bigint", "NO", "nextval('mana_ai.decrypt_audit_id_seq'::regclass)"),
        ("user_id", "text", "NO", None),
        ("mission_id", "text", "NO", None),
        ("iteration_id", "text", "YES", None),
        ("table_name", "text", "NO", None),
        ("record_id", "text", "NO", None),
        ("status", "text", "NO", None),
        ("reason", "text", "YES", None),
        ("ts", "timestamp with time zone", "NO", "now()"),
    ],
}

SYNC_COLUMNS = [
    ("id", "uuid", "NO", "gen_random_uuid()"),
    ("app_id", "text", "NO", None),
    ("table_name", "text", "NO", None),
    ("record_id", "text", "NO", None),
    ("user_id", "text", "NO", None),
    ("op", "text", "NO", None),
    ("data", "jsonb", "YES", None),
    ("field_meta", "jsonb", "YES", "'{}'::jsonb"),
    ("client_id", "text", "NO", None),
    ("created_at", "timestamp with time zone", "NO", "now()"),
    ("schema_version", "integer", "NO", "1"),
    ("actor", "jsonb", "YES", None),
    ("origin", "text", "YES", None),
    ("space_id", "text", "YES", None),
]

SEED_INDEXES = {
    "mission_snapshots_pkey": "CREATE UNIQUE INDEX mission_snapshots_pkey ON mana_ai.mission_snapshots USING btree (user_id, mission_id)",
    "idx_mission_snapshots_due": "CREATE INDEX idx_mission_snapshots_due ON mana_ai.mission_snapshots USING btree (((record ->> 'state'::text)), ((record ->> 'nextRunAt'::text))) WHERE ((record ->> 'state'::text) = 'active'::text)",
    "idx_mission_snapshots_user": "CREATE INDEX idx_mission_snapshots_user ON mana_ai.mission_snapshots USING btree (user_id, last_applied_at)",
    "decrypt_audit_pkey": "CREATE UNIQUE INDEX decrypt_audit_pkey ON mana_ai.decrypt_audit USING btree (id)",
    "idx_decrypt_audit_mission": "CREATE INDEX idx_decrypt_audit_mission ON mana_ai.decrypt_audit USING btree (user_id, mission_id, ts DESC)",
    "agent_snapshots_pkey": "CREATE UNIQUE INDEX agent_snapshots_pkey ON mana_ai.agent_snapshots USING btree (user_id, agent_id)",
    "idx_agent_snapshots_user": "CREATE INDEX idx_agent_snapshots_user ON mana_ai.agent_snapshots USING btree (user_id, last_applied_at)",
    "idx_agent_snapshots_state": "CREATE INDEX idx_agent_snapshots_state ON mana_ai.agent_snapshots USING btree (((record ->> 'state'::text))) WHERE ((record ->> 'state'::text) = 'active'::text)",
}

SYNC_INDEXES = {
    "sync_changes_pkey": "CREATE UNIQUE INDEX sync_changes_pkey ON public.sync_changes USING btree (id)",
    "idx_sync_changes_user_app_created": "CREATE INDEX idx_sync_changes_user_app_created ON public.sync_changes USING btree (user_id, app_id, created_at)",
    "idx_sync_changes_table_record_created": "CREATE INDEX idx_sync_changes_table_record_created ON public.sync_changes USING btree (table_name, record_id, created_at)",
    "idx_sync_changes_user_app_table_created": "CREATE INDEX idx_sync_changes_user_app_table_created ON public.sync_changes USING btree (user_id, app_id, table_name, created_at)",
    "idx_sync_changes_user_space_app_created": "CREATE INDEX idx_sync_changes_user_space_app_created ON public.sync_changes USING btree (user_id, space_id, app_id, created_at) WHERE (space_id IS NOT NULL)",
}


def test_migrate_creates_exactly_the_seed_schema(empty_db: str) -> None:
    applied = migrate(empty_db, with_sync_schema=True)
    assert applied == [f"{m.version:04d}_{m.name}" for m in discover()]
    cat = catalog(empty_db)

    by_table: dict[str, list[tuple]] = {}
    for schema, table, column, dtype, nullable, default in cat["columns"]:  # type: ignore[union-attr]
        by_table.setdefault(f"{schema}.{table}", []).append((column, dtype, nullable, default))
    for table, expected in SEED_COLUMNS.items():
        assert by_table[f"mana_ai.{table}"] == expected, table
    assert by_table["public.sync_changes"] == SYNC_COLUMNS

    indexes = {name: ddl for _, _, name, ddl in cat["indexes"]}  # type: ignore[misc]
    for name, ddl in {**SEED_INDEXES, **SYNC_INDEXES}.items():
        assert indexes[name] == ddl
    seed_tables = {"mission_snapshots", "agent_snapshots", "decrypt_audit"}
    seed_index_names = {n for _, t, n, _ in cat["indexes"] if t in seed_tables}  # type: ignore[misc]
    assert seed_index_names == set(SEED_INDEXES), "no index beyond the seed's on its tables"

    constraints = {(t, d) for t, _, d in cat["constraints"]}  # type: ignore[misc]
    assert ("mana_ai.decrypt_audit",
            "CHECK ((status = ANY (ARRAY['ok'::text, 'failed'::text, 'scope-violation'::text])))"
            ) in constraints

    policies = {(s, t, n): (cmd, qual, chk) for s, t, n, cmd, qual, chk in cat["policies"]}  # type: ignore[misc]
    assert policies[("mana_ai", "decrypt_audit", "decrypt_audit_user_scope")] == (
        "ALL", "(user_id = current_setting('app.current_user_id'::text, true))", None)
    assert policies[("public", "sync_changes", "sync_changes_user_isolation")] == (
        "ALL", "(user_id = current_setting('app.current_user_id'::text, true))",
        "(user_id = current_setting('app.current_user_id'::text, true))")
    cmd, qual, chk = policies[("public", "sync_changes", "sync_changes_space_member_read")]
    assert cmd == "SELECT" and chk is None
    assert "string_to_array" in qual and "app.current_user_space_ids" in qual
    assert len(policies) == 3

    rls = {t: (on, forced) for t, on, forced in cat["rls"]}  # type: ignore[misc]
    assert rls["sync_changes"] == (True, True)
    assert rls["mana_ai.decrypt_audit"] == (True, False)
    assert rls["mana_ai.mission_snapshots"] == (False, False)

    triggers = [name for _, name, _ in cat["triggers"]]  # type: ignore[misc]
    assert triggers == ["mana_ai_journal"]


def test_second_migrate_changes_nothing(empty_db: str) -> None:
    migrate(empty_db, with_sync_schema=True)
    before = catalog(empty_db)
    assert migrate(empty_db, with_sync_schema=True) == []
    assert catalog(empty_db) == before


def test_migrate_without_sync_changes_says_how(empty_db: str) -> None:
    from consumer.errors import ConfigError

    with pytest.raises(ConfigError, match="sync_changes does not exist.*--with-sync-schema"):
        migrate(empty_db)


def test_concurrent_migrations_do_not_race(empty_db: str) -> None:
    import threading

    errors: list[BaseException] = []

    def go() -> None:
        try:
            migrate(empty_db, with_sync_schema=True)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(empty_db) as conn:
        count = conn.execute("SELECT count(*) FROM mana_ai.schema_migrations").fetchone()
    assert count == (len(discover()),)


def test_missing_trigger_privilege_is_one_clear_line(empty_db: str) -> None:
    """A role that may create schemas but not triggers on mana-sync's table."""
    with psycopg.connect(empty_db, autocommit=True) as admin:
        admin.execute((__import__("consumer.sql").sql.schema_dir() / "sync_changes.sql").read_text())
        admin.execute("DROP ROLE IF EXISTS limited_ai")
        admin.execute("CREATE ROLE limited_ai LOGIN")
        dbname = admin.info.dbname
        admin.execute(f'GRANT CREATE ON DATABASE "{dbname}" TO limited_ai')
        admin.execute("GRANT SELECT ON public.sync_changes TO limited_ai")
    from psycopg.conninfo import make_conninfo

    limited = make_conninfo(empty_db, user="limited_ai")
    try:
        with pytest.raises(PrivilegeError) as info:
            migrate(limited)
        message = str(info.value)
        assert "\n" not in message
        assert "sync_changes" in message and "TRIGGER" in message
    finally:
        with psycopg.connect(empty_db, autocommit=True) as admin:
            admin.execute("DROP OWNED BY limited_ai")
            admin.execute("DROP ROLE limited_ai")


def test_cli_migrate_applies_then_reports_up_to_date(empty_db: str) -> None:
    first = run_cli("migrate", "--with-sync-schema", "--database-url", empty_db)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied 0001_seed")
    second = run_cli("migrate", "--with-sync-schema", "--database-url", empty_db)
    assert second.returncode == 0 and second.stdout.strip() == "schema is up to date"


def test_a_migration_waits_for_the_log_no_longer_than_its_bound(
    empty_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction of mana-sync stays open on the log: the trigger's DDL cannot lock it.
    The migration gives up each wait after LOCK_WAIT (a writer queued behind it waits no
    longer), tries LOCK_TRIES times, then fails with one line; once the transaction is
    gone, it applies."""
    import threading
    import time

    from consumer import migrate as migrate_module
    from consumer.errors import ConfigError
    from consumer.sql import schema_dir

    monkeypatch.setattr(migrate_module, "LOCK_WAIT", 0.3, raising=False)
    monkeypatch.setattr(migrate_module, "LOCK_TRIES", 3, raising=False)
    insert = """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                    data, client_id) VALUES ('notes', 'notes', 'n', 'u', 'insert', '{}', 'c')"""
    with psycopg.connect(empty_db, autocommit=True) as holder:
        holder.execute((schema_dir() / "sync_changes.sql").read_text())
        holder.execute("BEGIN")
        holder.execute(insert)  # open: its lock on the log stays
        failed: list[BaseException] = []

        def run() -> None:
            try:
                migrate(empty_db)
            except BaseException as exc:  # noqa: BLE001 - looked at below
                failed.append(exc)

        thread = threading.Thread(target=run)
        started = time.monotonic()
        thread.start()
        time.sleep(0.6)  # the migration is waiting for the log by now
        # A writer queued behind the migration's wait, for one bound at most (its own
        # lock_timeout only keeps this test from hanging should the bound be gone).
        with psycopg.connect(empty_db, autocommit=True, options="-c lock_timeout=3s") as writer:
            t = time.monotonic()
            try:
                writer.execute(insert)
            except psycopg.errors.LockNotAvailable:
                pass
            queued = time.monotonic() - t
        thread.join(30)
        elapsed = time.monotonic() - started
        holder.execute("ROLLBACK")
    assert not thread.is_alive(), "the migration waited without a bound"
    assert queued < 1.5, queued
    assert len(failed) == 1 and isinstance(failed[0], ConfigError), failed
    assert "gave up after 3 waits of 0.3 s for the tables migration" in str(failed[0])
    assert "pg_stat_activity" in str(failed[0])
    assert elapsed < 10, elapsed  # 3 waits of 0.3 s and the pauses between them
    assert migrate(empty_db)  # the holder is gone: everything applies
