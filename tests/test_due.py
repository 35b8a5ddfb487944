"""The due index (mana_ai.mission_due): its SQL parser equals the Python one, the migration
backfills it, and replay rebuilds it with the snapshots (and --verify checks it)."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from consumer.decisions import due_instant
from consumer.replay import EXIT_DIFFERS, EXIT_OK, run_replay
from consumer.sql import schema_dir
from tests.helpers import QUIET, leftovers, project
from tests.logtools import mission, write

MIGRATION = Path(schema_dir()) / "migrations" / "0008_due_instant.sql"


def due_index(dsn: str) -> dict[tuple[str, str], datetime]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT user_id, mission_id, due_at FROM mana_ai.mission_due")
        return {(u, m): at for u, m, at in rows}


def derived_index(dsn: str) -> dict[tuple[str, str], datetime]:
    """What the due index must hold: due_instant of every mission snapshot."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT user_id, mission_id, record FROM mana_ai.mission_snapshots")
        return {(u, m): at for u, m, record in rows if (at := due_instant(record)) is not None}


# --------------------------------------------------------------------------- one rule, twice

_two = st.integers(0, 99).map(lambda n: f"{n:02d}")
_spelled = st.builds(
    lambda y, mo, d, sep, h, mi, sec, frac, off: (
        f"{y:04d}-{mo}-{d}" + ("" if sep is None else f"{sep}{h}:{mi}{sec}{frac}{off}")
    ),
    st.integers(0, 10000),
    st.sampled_from(["01", "02", "06", "12", "13", "00", "1"]),
    st.sampled_from(["01", "15", "28", "29", "30", "31", "32", "00"]),
    st.sampled_from([None, "T", "t", " ", "x", "_", "TT"]),
    st.sampled_from(["00", "09", "10", "23", "24", "7"]),
    st.sampled_from(["00", "30", "59", "60", "5"]),
    st.sampled_from(["", ":00", ":59", ":60", ":5"]),
    st.sampled_from(["", ".5", ".123", ".123456", ".1234567", ".9999999", ".", ",5"]),
    st.one_of(
        st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+14:00", "-12:00", "+15:59",
                         "+16:00", "-23:59", "+05:30", "+0530", "+05", "+5", "+05:3", "Z "]),
        st.builds(lambda s, h, m: f"{s}{h}:{m}", st.sampled_from("+-"), _two, _two),
    ),
)
_valid = st.builds(
    lambda at, sep, spec, off: (
        at.strftime("%Y-%m-%d") if sep is None
        else at.strftime("%Y-%m-%d") + sep + at.isoformat(timespec=spec)[11:] + off
    ),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from([None, "T", "T", "t", " "]),
    st.sampled_from(["minutes", "seconds", "milliseconds", "microseconds"]),
    st.sampled_from(["", "Z", "z", "+00:00", "+14:00", "-10:00", "+05:30", "-0330", "+01"]),
)
_text = st.one_of(
    _valid,
    _spelled,
    # No NUL and no lone surrogates: jsonb cannot hold either, so neither reaches the log.
    st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=("Cs",))),
)
_mission = st.fixed_dictionaries(
    {"nextRunAt": st.one_of(_text, _text, _text, st.none(), st.integers(), st.booleans())},
    optional={
        "state": st.sampled_from(["active", "paused", "archived", "", "Active"]),
        "deletedAt": st.one_of(st.none(), st.sampled_from(["", "2026-01-01T00:00:00Z", 0]),
                               st.booleans(), st.just({}), st.just([])),
    },
).map(lambda m: {"state": "active", **m} if "state" not in m or m["state"] == "" else m)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          max_examples=150)
@given(missions=st.lists(_mission, min_size=1, max_size=40))
def test_sql_and_python_read_a_due_instant_alike(db: str, missions: list[dict[str, Any]]) -> None:
    """mana_ai.mission_due_at (backfill, bench) and decisions.due_instant (apply, scheduler)
    accept the same spellings and read them to the same instant."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT mana_ai.mission_due_at(r) FROM unnest(%s::jsonb[]) WITH ORDINALITY AS x(r, i)"
            " ORDER BY i",
            ([Jsonb(m) for m in missions],),
        ).fetchall()
    for m, (sql_at,) in zip(missions, rows, strict=True):
        assert sql_at == due_instant(m), m


def test_due_spellings_at_the_edges(db: str) -> None:
    cases = {
        "2026-01-01": datetime(2026, 1, 1, tzinfo=UTC),
        "2026-01-01T10:00:00.1234567z": datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC),
        "2026-01-01 10:00+0200": datetime(2026, 1, 1, 8, tzinfo=UTC),
        "2026-01-01T10:00:00-03": datetime(2026, 1, 1, 13, tzinfo=UTC),
        "2026-11-26T23:30:00+14:00": datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        "2026-02-30T00:00:00Z": None,
        "2026-01-01T24:00:00Z": None,
        "2026-01-01T10:00:00+16:00": None,  # past what PostgreSQL can read
        "9999-12-31T23:00:00-02:00": None,  # the year 10000 in UTC
        "0001-01-01T00:30:00+01:00": None,  # the year 0 in UTC
        "20260101T100000Z": None,
        "2026-W01-1": None,
        " 2026-01-01T10:00:00Z": None,
    }
    with psycopg.connect(db) as conn:
        for text, expected in cases.items():
            record = {"state": "active", "nextRunAt": text}
            (sql_at,) = conn.execute("SELECT mana_ai.mission_due_at(%s)", (Jsonb(record),)
                                     ).fetchone() or (None,)
            assert (sql_at, due_instant(record)) == (expected, expected), text


# --------------------------------------------------------------------------- backfill


def test_migration_backfills_the_snapshots_it_finds(db: str) -> None:
    """Snapshots written before the due index existed get their rows from the migration."""
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    records = {
        "plus": {"state": "active", "nextRunAt": "2026-05-01T14:00:00+02:00"},
        "utc": {"state": "active", "nextRunAt": "2026-05-01T12:00:00.000Z"},
        "paused": {"state": "paused", "nextRunAt": "2026-05-01T12:00:00Z"},
        "deleted": {"state": "active", "nextRunAt": "2026-05-01T12:00:00Z", "deletedAt": ""},
        "garbage": {"state": "active", "nextRunAt": "soon"},
    }
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DELETE FROM mana_ai.mission_due")
        for mission_id, record in records.items():
            conn.execute(
                """INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record)
                   VALUES ('u1', %s, %s)""", (mission_id, Jsonb({"id": mission_id, **record})))
        conn.execute("INSERT INTO mana_ai.mission_due VALUES ('u1', 'utc', 'epoch')")  # stale
        conn.execute(MIGRATION.read_text())  # idempotent: what `migrate` ran once
    assert due_index(db) == {("u1", "plus"): now, ("u1", "utc"): now} == derived_index(db)


# --------------------------------------------------------------------------- replay


def due_history(dsn: str, seed: int, rows: int = 120) -> None:
    """Missions that move between due spellings, offsets, states and deletions."""
    rng = random.Random(seed)
    base = datetime(2026, 6, 1, 8, tzinfo=UTC)
    zones = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-10)),
             timezone(timedelta(hours=5, minutes=30))]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(rows):
            record = f"m{rng.randrange(12)}"
            user = f"u{rng.randrange(2)}"
            created = base + timedelta(seconds=i)
            roll = rng.random()
            if roll < 0.04:
                write(conn, "aiMissions", record, None, user=user, op="delete",
                      created_at=created)
                continue
            at = base + timedelta(minutes=rng.randrange(-600, 600))
            data: dict[str, Any] = {
                "nextRunAt": rng.choice([
                    at.astimezone(rng.choice(zones)).isoformat(timespec="milliseconds"),
                    at.isoformat().replace("+00:00", "Z"), "later", None]),
            }
            if roll < 0.3:
                data["state"] = rng.choice(["active", "active", "paused"])
            if roll > 0.9:
                data["deletedAt"] = rng.choice(["", False, None, created.isoformat()])
            write(conn, "aiMissions", record, data, user=user, created_at=created)


def test_replay_rebuilds_the_due_index_and_verify_checks_it(db: str) -> None:
    due_history(db, 5)
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m-edit", state="active", nextRunAt="2026-06-01T10:00:00+02:00")
    project(db)
    projected = due_index(db)
    assert projected == derived_index(db) and len(projected) >= 3
    assert run_replay(db, batch_size=7, **QUIET) == EXIT_OK
    assert due_index(db) == projected
    assert leftovers(db) == []

    out = io.StringIO()
    assert run_replay(db, verify=True, out=out, **QUIET) == EXIT_OK, out.getvalue()
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("""UPDATE mana_ai.mission_due SET due_at = due_at + interval '2 hours'
                        WHERE mission_id = 'm-edit'""")
    out = io.StringIO()
    assert run_replay(db, verify=True, out=out, **QUIET) == EXIT_DIFFERS
    assert "mission due index u1/m-edit: fields due_at" in out.getvalue(), out.getvalue()
    # A replay puts it right.
    assert run_replay(db, **QUIET) == EXIT_OK
    assert due_index(db) == projected


def test_events_after_the_swap_keep_the_due_index(db: str) -> None:
    """The swapped-in due table is the one the live projection writes from then on."""
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active", nextRunAt="2026-06-01T10:00:00Z")
    projector = project(db)
    assert run_replay(db, **QUIET) == EXIT_OK
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", nextRunAt="2026-06-01T12:00:00+01:00")
        mission(conn, "m2", state="active", nextRunAt="2026-06-02")
    project(db, projector)
    assert due_index(db) == {
        ("u1", "m1"): datetime(2026, 6, 1, 11, tzinfo=UTC),
        ("u1", "m2"): datetime(2026, 6, 2, tzinfo=UTC),
    } == derived_index(db)
