"""Snapshots projected under the old merge rule (a first row's unstamped fields stamped
with its created_at) after an upgrade: they still apply, `consumer migrate` and
`consumer status` say a replay corrects them, and a replay does."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta

import msgspec
import psycopg

from consumer.cli import main as cli_main
from consumer.merge import decode_state, is_legacy
from consumer.replay import EXIT_OK, run_replay
from tests.helpers import QUIET, project
from tests.logtools import write

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def title(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT record->>'title' FROM mana_ai.mission_snapshots WHERE mission_id = 'm1'"
        ).fetchone()
    assert row is not None
    return str(row[0])


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli_main(list(args))
    return code, out.getvalue()


def test_old_rule_states_are_noted_and_corrected_by_a_replay(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        # A legacy insert without stamps, then an edit from a device whose clock is behind.
        first = write(conn, "aiMissions", "m1", {"title": "old"}, op="insert", created_at=T0)
        write(conn, "aiMissions", "m1", {"title": "edited"}, created_at=T0 + timedelta(seconds=1),
              field_meta={"title": "2026-03-01T08:59:59.000Z"})
    project(db)
    assert title(db) == "edited"  # upstream's rule: the unstamped first-row field has no clock

    # What the previous version stored: three keys, the first row's field stamped with its
    # created_at, so the edit lost. Then the upgrade to this version notes such states.
    old = msgspec.msgpack.encode(
        {
            "fields": {"title": [us(T0), us(T0), first, "old"]},
            "deleted": False,
            "last_applied_us": us(T0 + timedelta(seconds=1)),
        }
    )
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE mana_ai.record_clocks SET state = %s", (old,))
        conn.execute(
            """UPDATE mana_ai.mission_snapshots SET record = '{"id":"m1","title":"old"}'"""
        )
        conn.execute("DELETE FROM mana_ai.schema_migrations WHERE name = 'merge_first_row'")
        conn.execute("DROP TABLE mana_ai.merge_rule_upgrade")
    code, out = cli("migrate", "--database-url", db)
    assert code == 0 and "applied 0009_merge_first_row" in out
    assert "1 snapshot states were projected under the old merge rule" in out
    assert "consumer replay" in out
    code, out = cli("status", "--database-url", db)
    assert code == 0 and "consumer replay" in out

    # Meanwhile the old state keeps its rule: a new row still merges, the old way.
    with psycopg.connect(db, autocommit=True) as conn:
        write(conn, "aiMissions", "m1", {"state": "active"}, created_at=T0 + timedelta(seconds=2))
    project(db)
    assert title(db) == "old"
    with psycopg.connect(db) as conn:
        (state,) = conn.execute("SELECT state FROM mana_ai.record_clocks").fetchone()  # type: ignore[misc]
    assert is_legacy(decode_state(state))

    # --verify finds the difference; the replay corrects it and clears the note.
    assert run_replay(db, verify=True, **QUIET) != EXIT_OK
    assert run_replay(db, **QUIET) == EXIT_OK
    assert title(db) == "edited"
    code, out = cli("status", "--database-url", db)
    assert code == 0 and "consumer replay" not in out
    code, out = cli("migrate", "--database-url", db)
    assert out.strip() == "schema is up to date"
    assert run_replay(db, verify=True, **QUIET) == EXIT_OK
