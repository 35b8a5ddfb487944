"""Replay against a real server: equal to the incremental projection and to the fold,
concurrent with writers and a live projector, interruptible, --verify, the seed schema
after the swap, the journal hold, and row level security."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bench.baseline import bench_sql
from consumer import eventloop, locks
from consumer.db import Bounds, aconnect
from consumer.progress import Progress
from consumer.projection import Projector
from consumer.replay import (
    EXIT_DIFFERS,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TERMINATED,
    Terminated,
    replay,
    run_replay,
)
from consumer.replay_store import RETIRED, SHADOW
from consumer.sql import load
from tests.helpers import QUIET, catalog, leftovers, project
from tests.logtools import actual_snapshots, agent, expected_snapshots, mission, write

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def clocks(dsn: str) -> dict[tuple[str, str, str], Any]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT kind, user_id, record_id, state FROM mana_ai.record_clocks")
        return {(k, u, r): s for k, u, r, s in rows}


def live_rows(dsn: str) -> dict[str, set]:
    """Everything the live tables hold (records, clocks, applied times), for 'untouched'."""
    with psycopg.connect(dsn) as conn:
        return {
            table: set(conn.execute(
                f"SELECT user_id, {key}, record::text, last_applied_at, updated_at "
                f"FROM mana_ai.{table}").fetchall())
            for table, key in (("mission_snapshots", "mission_id"),
                               ("agent_snapshots", "agent_id"))
        } | {"clocks": set(conn.execute(
            "SELECT kind, user_id, record_id, state::text FROM mana_ai.record_clocks"
        ).fetchall())}


def stamp(rng: random.Random, at: datetime) -> Any:
    """A field_meta value in one of the shapes the log carries (or a broken one)."""
    text = at.isoformat(timespec=rng.choice(["milliseconds", "microseconds"]))
    if rng.random() < 0.5:
        text = text.replace("+00:00", "Z")
    return rng.choice([
        text, text, {"at": text, "actor": {"kind": "user"}, "origin": "user"},
        {"at": text}, "not a date", 17, None,
    ])


def random_history(dsn: str, seed: int, rows: int = 150) -> None:
    """Missions and agents of three users: creates, updates with out-of-order created_at
    and field stamps of every shape, deletes, deletedAt, and a few unappliable rows; the
    first rows predate the journal trigger (bootstrap path of the live projection)."""
    rng = random.Random(seed)
    fields = ["title", "state", "nextRunAt", "n", "agentId", "note"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        for i in range(rows):
            if i == rows // 5:
                conn.execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_journal")
            table = rng.choice(["aiMissions", "aiMissions", "agents"])
            record = f"{'m' if table == 'aiMissions' else 'a'}{rng.randrange(8)}"
            user = f"u{rng.randrange(3)}"
            created = BASE + timedelta(seconds=rng.randrange(0, 600), microseconds=rng.choice(
                [0, 0, 500, 123456]))
            roll = rng.random()
            if roll < 0.04:
                write(conn, table, record, None, user=user, op="delete", created_at=created)
                continue
            if roll < 0.07:  # quarantined: data is not an object
                conn.execute(
                    """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id,
                           op, data, client_id) VALUES ('ai', %s, %s, %s, 'update',
                           '[1, 2]', 'test-client')""", (table, record, user))
                continue
            data: dict[str, Any] = {
                f: rng.choice([f"{f}-{rng.randrange(5)}", rng.randrange(100), None, True])
                for f in rng.sample(fields, rng.randrange(1, 4))
            }
            if rng.random() < 0.06:
                data["deletedAt"] = created.isoformat()
            meta = {f: stamp(rng, created + timedelta(seconds=rng.randrange(-30, 30)))
                    for f in data if rng.random() < 0.6}
            write(conn, table, record, data, user=user, field_meta=meta,
                  op=rng.choice(["insert", "update", "update"]), created_at=created)
        write(conn, "notes", "n1", {"not": "ours"})


# --------------------------------------------------------------------------- equality


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_equals_the_projection_and_the_fold(db: str, seed: int) -> None:
    random_history(db, seed)
    project(db)
    projected, projected_clocks = actual_snapshots(db), clocks(db)
    expected = expected_snapshots(db)
    assert projected == expected
    # Let the replay's record-boundary cut and cross-batch merge both happen.
    assert run_replay(db, batch_size=7, **QUIET) == EXIT_OK
    assert actual_snapshots(db) == expected
    assert clocks(db) == projected_clocks
    assert leftovers(db) == []


def test_replay_of_an_empty_log_and_twice_in_a_row(db: str) -> None:
    assert run_replay(db, **QUIET) == EXIT_OK
    assert actual_snapshots(db) == {"missions": {}, "agents": {}}
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    assert run_replay(db, **QUIET) == EXIT_OK
    assert run_replay(db, **QUIET) == EXIT_OK
    assert set(actual_snapshots(db)["missions"]) == {("u1", "m1")}


def test_swap_keeps_the_seed_schema_and_the_grants(db: str) -> None:
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role}")
        conn.execute(f"GRANT SELECT ON mana_ai.mission_snapshots TO {role}")
        mission(conn, "m1", state="active", nextRunAt="2026-01-01T00:00:00Z")
        agent(conn, "a1", name="Ada", state="active")
    try:
        project(db)
        before = catalog(db)
        assert run_replay(db, **QUIET) == EXIT_OK
        assert catalog(db) == before
        with psycopg.connect(db) as conn:
            assert conn.execute(
                "SELECT has_table_privilege(%s, 'mana_ai.mission_snapshots', 'SELECT')",
                (role,)).fetchone() == (True,)
            # The seed's partial index still serves the due query.
            conn.execute("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN SELECT mission_id FROM mana_ai.mission_snapshots "
                "WHERE record->>'state' = 'active' AND record->>'nextRunAt' <= '2027'"))
            assert "idx_mission_snapshots_due" in plan
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


# --------------------------------------------------------------------------- live traffic


def test_live_projector_keeps_its_prepared_statements_across_the_swap(db: str) -> None:
    """The projector's connection has prepared its statements (psycopg: after 5 uses);
    the swap replaces the tables under those names; the next passes still work."""

    async def go() -> None:
        projector = Projector()
        async with await aconnect(db, role="test") as conn:
            await projector.bootstrap(conn)
            with psycopg.connect(db, autocommit=True) as writer:
                for i in range(8):
                    mission(writer, f"m{i}", state="active", n=i)
                    agent(writer, f"a{i}", name=f"A{i}")
                    await projector.catch_up(conn)
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_prepared_statements "
                    "WHERE statement ~ 'record_clocks'")  # the journal read and the write
                row = await cur.fetchone()
                assert row is not None and row[0] >= 2, "apply statements were not prepared"
                await conn.commit()
                code = await anyio.to_thread.run_sync(lambda: run_replay(db, **QUIET))
                assert code == EXIT_OK
                for i in range(8):
                    mission(writer, f"m{i}", title=f"after swap {i}")
                    agent(writer, f"a{i}", role="after swap")
                    mission(writer, f"new{i}", state="active")
                    await projector.catch_up(conn)

    eventloop.run(go)
    snaps = actual_snapshots(db)
    assert snaps == expected_snapshots(db)
    assert snaps["missions"][("u1", "m3")]["title"] == "after swap 3"
    assert ("u1", "new7") in snaps["missions"]


@pytest.mark.anyio
async def test_replay_beside_writers_a_live_projector_and_a_reader(db: str) -> None:
    """Writers only add missions (and update them): the mission count a reader sees never
    drops, before, during or after the swap; the end state is the one-shot fold."""
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(40):
            mission(conn, f"seed{i}", state="active", user=f"u{i % 3}")
            agent(conn, f"a{i % 5}", name=f"A{i}", user=f"u{i % 3}")
    stop = anyio.Event()
    replayed = anyio.Event()
    seeded = anyio.Event()  # the live projection holds the 40 seed missions
    moved_on = anyio.Event()  # the live projector made passes after the swap
    writer_done = anyio.Event()  # the writer's last transaction has ended
    seen: list[int] = []
    written = 0
    passes_after_swap = 0

    async def writer() -> None:
        nonlocal written
        async with await aconnect(db, role="test", autocommit=True) as conn:
            while not stop.is_set():
                async with conn.transaction():
                    for _ in range(3):
                        written += 1
                        await conn.execute(
                            """INSERT INTO public.sync_changes (app_id, table_name, record_id,
                                   user_id, op, data, client_id)
                               VALUES ('ai', 'aiMissions', %s, %s, 'insert', %s::jsonb, 'w')""",
                            (f"w{written}", f"u{written % 3}",
                             json.dumps({"state": "active", "n": written})),
                        )
                        await conn.execute(
                            """INSERT INTO public.sync_changes (app_id, table_name, record_id,
                                   user_id, op, data, client_id)
                               VALUES ('ai', 'aiMissions', %s, 'u0', 'update', %s::jsonb, 'w')""",
                            (f"seed{written % 40 // 3 * 3}", json.dumps({"n": written})),
                        )
                await anyio.sleep(0.003)
        writer_done.set()

    async def live_projector() -> None:
        nonlocal passes_after_swap
        projector = Projector(batch_size=50)
        async with await aconnect(db, role="test") as conn:
            await projector.bootstrap(conn)
            while not stop.is_set():
                await projector.catch_up(conn)
                if replayed.is_set():
                    passes_after_swap += 1
                    if passes_after_swap >= 5:
                        moved_on.set()
                await anyio.sleep(0.005)
            # The writer may commit once more after `stop`: the last pass comes after it.
            await writer_done.wait()
            await projector.catch_up(conn)

    async def reader() -> None:
        # A reader of the snapshots is not one of our service connections: no statement
        # timeout, so a slow swap on a loaded machine makes it wait, as it would in production.
        unbounded = Bounds(statement_timeout=0)
        async with await aconnect(db, role="test", autocommit=True, bounds=unbounded) as conn:
            while not stop.is_set():
                cur = await conn.execute("SELECT count(*) FROM mana_ai.mission_snapshots")
                row = await cur.fetchone()
                assert row is not None
                seen.append(row[0])
                if row[0] >= 40:
                    seeded.set()
                await anyio.sleep(0.002)

    def slow(p: Progress) -> None:
        import time

        time.sleep(0.003)  # let the writers and the projector move during the build

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(live_projector)
        tg.start_soon(reader)
        await seeded.wait()
        written_before = written
        count_before = seen[-1]
        code = await anyio.to_thread.run_sync(
            lambda: run_replay(db, batch_size=5, progress=slow))
        replayed.set()
        written_during = written - written_before
        await moved_on.wait()
        stop.set()
    assert code == EXIT_OK
    assert written_during > 0, "no write happened during the replay"
    assert seen == sorted(seen), "the mission count dropped: a half-built table was visible"
    assert seen[-1] > count_before
    assert actual_snapshots(db) == expected_snapshots(db)


def test_journal_hold_keeps_rows_the_swap_needs(db: str) -> None:
    """Mid-build, rows are written, applied by the live projector and pruned behind its
    checkpoint. The swap must still apply them to the shadow, or they would be lost (the
    live projector will not apply them again)."""
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(30):
            mission(conn, f"m{i}", state="active")
    projector = project(db)
    done = False
    pruned: list[int] = []

    def mid_build(p: Progress) -> None:
        nonlocal done
        if p.phase != "build" or p.done == 0 or done:
            return
        done = True
        with psycopg.connect(db, autocommit=True) as conn:
            for i in range(5):
                mission(conn, f"late{i}", state="active")
        project(db, projector)
        assert projector.cp is not None
        with psycopg.connect(db, autocommit=True) as conn:
            total = conn.execute("SELECT count(*) FROM mana_ai.journal").fetchone()
            cur = conn.execute(load("journal/prune"),
                               {"applied_below": str(projector.cp.applied_below),
                                "replay_lock": locks.REPLAY})
            pruned.append(cur.rowcount)
            kept = conn.execute("SELECT count(*) FROM mana_ai.journal").fetchone()
        assert total is not None and kept is not None and kept[0] >= 5

    assert run_replay(db, batch_size=4, progress=mid_build) == EXIT_OK
    assert done and pruned
    missions = actual_snapshots(db)["missions"]
    assert {("u1", f"late{i}") for i in range(5)} <= set(missions)
    assert actual_snapshots(db) == expected_snapshots(db)
    # Without a hold, the same statement prunes up to the checkpoint.
    with psycopg.connect(db, autocommit=True) as conn:
        assert leftovers(db) == []
        conn.execute(load("journal/prune"),
                     {"applied_below": str(projector.cp.applied_below),
                                "replay_lock": locks.REPLAY})  # type: ignore[union-attr]
        left = conn.execute("SELECT count(*) FROM mana_ai.journal WHERE xid < %s::xid8",
                            (str(projector.cp.applied_below),)).fetchone()  # type: ignore[union-attr]
        assert left == (0,)


def test_a_hold_of_a_dead_session_does_not_pin_the_journal(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(5):
            mission(conn, f"m{i}", state="active")
        conn.execute("INSERT INTO mana_ai.replay_hold (name, keep_from, pid) "
                     "VALUES ('replay', '1', 999999)")
    projector = project(db)
    assert projector.cp is not None
    with psycopg.connect(db, autocommit=True) as conn:
        cur = conn.execute(load("journal/prune"),
                           {"applied_below": str(projector.cp.applied_below),
                                "replay_lock": locks.REPLAY})
        assert cur.rowcount == 5


# --------------------------------------------------------------------------- interruption


class Boom(Exception):
    pass


def test_interrupted_build_leaves_the_live_tables_and_the_next_run_succeeds(db: str) -> None:
    random_history(db, 7, rows=80)
    project(db)
    before = live_rows(db)

    def explode(p: Progress) -> None:
        if p.done >= 20:
            raise Boom

    with pytest.raises(Boom):
        run_replay(db, batch_size=5, progress=explode)
    assert live_rows(db) == before
    assert leftovers(db) == []
    assert run_replay(db, **QUIET) == EXIT_OK
    assert actual_snapshots(db) == expected_snapshots(db)


def test_leftovers_of_a_killed_run_are_dropped_by_the_next(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
        conn.execute(f"CREATE TABLE mana_ai.{SHADOW.missions} "
                     "(LIKE mana_ai.mission_snapshots INCLUDING ALL)")
        conn.execute(f"INSERT INTO mana_ai.{SHADOW.missions} (user_id, mission_id, record) "
                     """VALUES ('u1', 'ghost', '{"id": "ghost"}')""")
        conn.execute("INSERT INTO mana_ai.replay_hold (name, keep_from, pid) "
                     "VALUES ('replay', '1', 999999)")
    assert run_replay(db, **QUIET) == EXIT_OK
    assert set(actual_snapshots(db)["missions"]) == {("u1", "m1")}
    assert leftovers(db) == []


def test_a_leftover_in_use_makes_the_replay_give_up_within_its_lock_timeout(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The *_retired tables a swap could not drop are still read by someone: the next
    replay does not wait for that reader without a bound; it gives up within its lock
    timeout, says why, and leaves the live snapshots untouched."""
    import time

    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
        conn.execute(f"CREATE TABLE mana_ai.{RETIRED.missions} "
                     "(LIKE mana_ai.mission_snapshots INCLUDING ALL)")
    project(db)
    before = live_rows(db)
    with psycopg.connect(db) as reader:
        reader.execute(f"SELECT count(*) FROM mana_ai.{RETIRED.missions}")  # stays open
        started = time.monotonic()
        code = run_replay(db, lock_timeout=0.5, **QUIET)
        took = time.monotonic() - started
        reader.rollback()
    assert code == EXIT_DIFFERS
    assert took < 10, took
    assert "are in use" in capsys.readouterr().err
    assert live_rows(db) == before
    assert run_replay(db, **QUIET) == EXIT_OK  # the reader is gone: it goes through
    assert leftovers(db) == []


@pytest.mark.anyio
async def test_a_stop_request_ends_the_build_at_the_next_batch(db: str) -> None:
    """What SIGTERM sets: the build stops after the batch in progress, the shadow goes."""
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(40):
            mission(conn, f"m{i}", state="active")
    project(db)
    before = live_rows(db)
    stop = anyio.Event()
    seen: list[int] = []

    def report(p: Progress) -> None:
        seen.append(p.done)
        if p.done >= 10:
            stop.set()

    with pytest.raises(Terminated):
        await replay(db, batch_size=5, progress=report, stop=stop)
    assert seen[-1] >= 10 and [d for d in seen if d >= 10] == [seen[-1]], seen
    assert live_rows(db) == before
    assert leftovers(db) == []


def test_sigterm_mid_build_exits_cleanly(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(200):
            mission(conn, f"m{i}", state="active")
    project(db)
    before = live_rows(db)
    script = textwrap.dedent("""
        import sys, time
        from consumer.replay import run_replay
        def slow(p):
            if p.done:
                print("building", flush=True)
            time.sleep(0.05)
        sys.exit(run_replay(sys.argv[1], batch_size=2, progress=slow))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, db], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "building"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "untouched" in err
    assert live_rows(db) == before
    assert leftovers(db) == []


# --------------------------------------------------------------------------- verify


def test_verify_equal_then_a_hand_edit_is_found(db: str) -> None:
    random_history(db, 11, rows=60)
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m-edit", state="active", title="right")
    project(db)
    out = io.StringIO()
    assert run_replay(db, verify=True, out=out, **QUIET) == EXIT_OK
    assert "equal" in out.getvalue()
    before = live_rows(db)

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("""UPDATE mana_ai.mission_snapshots SET record = record || '{"title":"x"}'
                        WHERE mission_id = 'm-edit'""")
        conn.execute("""INSERT INTO mana_ai.agent_snapshots (user_id, agent_id, record)
                        VALUES ('u9', 'intruder', '{"id": "intruder"}')""")
        edited = live_rows(db)
    out = io.StringIO()
    assert run_replay(db, verify=True, out=out, **QUIET) == EXIT_DIFFERS
    text = out.getvalue()
    assert "2 record(s) differ" in text, text
    assert "mission u1/m-edit: fields title" in text
    assert "agent u9/intruder: in the live table, not in the log's fold" in text
    assert live_rows(db) == edited != before, "verify must not change the live tables"
    assert leftovers(db) == []


def test_verify_leaves_out_records_the_projection_has_not_applied_yet(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    project(db)
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m2", state="active")  # journaled, not applied yet
    out = io.StringIO()
    assert run_replay(db, verify=True, out=out, **QUIET) == EXIT_OK
    assert "1 record(s) the live projection is still applying" in out.getvalue()


def test_cli_replay_and_verify(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    env = {k: v for k, v in os.environ.items() if k != "SYNC_DATABASE_URL"}
    for args in (["replay"], ["replay", "--verify"]):
        result = subprocess.run(
            [sys.executable, "-m", "consumer", *args, "--database-url", db],
            capture_output=True, text=True, timeout=60, env=env,
        )
        assert result.returncode == 0, result.stderr
    assert "equal" in result.stdout
    assert set(actual_snapshots(db)["missions"]) == {("u1", "m1")}


# --------------------------------------------------------------------------- refusals


def test_a_role_under_row_level_security_gets_one_line(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    role = f"rls_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT ON public.sync_changes TO {role}")
        conn.execute(f"GRANT USAGE ON SCHEMA mana_ai TO {role}")
    try:
        before = live_rows(db)
        code = run_replay(make_conninfo(db, user=role), **QUIET)
        err = capsys.readouterr().err.strip()
        assert code == EXIT_REFUSED
        assert len(err.splitlines()) == 1
        assert "row level security" in err and "BYPASSRLS" in err
        assert live_rows(db) == before
    finally:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_second_replay_at_the_same_time_is_refused(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    codes: list[int] = []

    def inner(p: Progress) -> None:
        if not codes:  # a second replay, from a thread (this one runs in the first's loop)
            thread = threading.Thread(target=lambda: codes.append(run_replay(db, **QUIET)))
            thread.start()
            thread.join()

    assert run_replay(db, progress=inner) == EXIT_OK
    assert codes == [EXIT_REFUSED]
    assert "another replay is running" in capsys.readouterr().err


def test_a_view_on_a_live_table_is_refused_before_the_build(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
        conn.execute("CREATE VIEW public.due AS SELECT mission_id FROM mana_ai.mission_snapshots")
    project(db)
    assert run_replay(db, **QUIET) == EXIT_REFUSED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "view" in err and "mission_snapshots" in err
    assert leftovers(db) == []
    assert run_replay(db, verify=True, **QUIET) == EXIT_OK  # verify swaps nothing


def test_a_long_transaction_on_the_live_tables_makes_the_swap_give_up(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The swap waits lock_timeout per try, never indefinitely: a queued ACCESS EXCLUSIVE
    request would stall the live projector and the scheduler behind it."""
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    project(db)
    before = live_rows(db)
    with psycopg.connect(db) as blocker:
        blocker.execute("SELECT count(*) FROM mana_ai.agent_snapshots")  # stays open
        code = run_replay(db, lock_timeout=0.1, **QUIET)
        with psycopg.connect(db, autocommit=True) as conn:
            # Meanwhile the live tables stay writable: nothing of ours waits in their queue.
            conn.execute("SET lock_timeout = '2s'")
            conn.execute("UPDATE mana_ai.mission_snapshots SET updated_at = updated_at")
    assert code == EXIT_DIFFERS
    assert "could not lock the live snapshot tables" in capsys.readouterr().err
    assert live_rows(db) == before
    assert leftovers(db) == []


def test_the_swap_holds_the_live_tables_at_most_lock_timeout_when_they_are_busy_in_turn(
    db: str,
) -> None:
    """lock_timeout bounds each table's wait on its own. Three tables busy one after the
    other, each freed within lock_timeout of the last, would let one LOCK hold the first
    table (and every writer queued behind it) three times as long; the swap's wait is
    bounded as a whole, then it lets go, catches up and tries again."""
    wait = 2.0
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    project(db)
    holders = []
    for table in ("mission_due", "mission_snapshots", "agent_snapshots"):
        holder = psycopg.connect(db)
        holder.execute(f"SELECT 1 FROM mana_ai.{table} LIMIT 1")  # ACCESS SHARE, kept open
        holders.append(holder)
    result: list[int] = []
    replaying = threading.Thread(
        target=lambda: result.append(run_replay(db, lock_timeout=wait, **QUIET)), daemon=True)
    try:
        replaying.start()
        with psycopg.connect(db, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            # The swap has locked the clocks and waits for the due index.
            while not watch.execute(
                """SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                   WHERE c.relname = 'mission_due' AND NOT l.granted
                     AND l.mode = 'AccessExclusiveLock'""").fetchone():
                assert time.monotonic() < deadline and replaying.is_alive()
                time.sleep(0.01)
        started = time.monotonic()
        # A writer of the clocks queues behind the swap's lock; the tables come free in turn.
        waited: list[float] = []

        def writer() -> None:
            with psycopg.connect(db) as conn:
                t = time.monotonic()
                conn.execute("LOCK TABLE mana_ai.record_clocks IN ROW EXCLUSIVE MODE")
                waited.append(time.monotonic() - t)

        writing = threading.Thread(target=writer, daemon=True)
        time.sleep(0.1)
        writing.start()
        for i, holder in enumerate(holders, 1):
            time.sleep(max(0.0, started + 0.75 * wait * i - time.monotonic()))
            holder.rollback()
        writing.join(30)
        replaying.join(60)
    finally:
        for holder in holders:
            holder.close()
    assert result == [EXIT_OK]  # a later try got them all
    # Within the bound (and the machine's slack), far below the 4.4 s of three waits in a row.
    assert waited and waited[0] < wait + 1.0, waited


def test_an_operators_cancel_of_the_swaps_lock_wait_is_not_taken_for_a_busy_table(
    db: str,
) -> None:
    """The swap's LOCK runs under a statement timeout to bound its wait; a cancel before
    that bound is an operator's (pg_cancel_backend), and the replay stops with it rather
    than catch up and try again as if the tables were busy."""
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    project(db)
    outcome: list[BaseException | int] = []

    def go() -> None:
        try:
            outcome.append(run_replay(db, lock_timeout=60, **QUIET))
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    with psycopg.connect(db) as holder:
        holder.execute("SELECT 1 FROM mana_ai.agent_snapshots LIMIT 1")  # kept open
        replaying = threading.Thread(target=go, daemon=True)
        replaying.start()
        with psycopg.connect(db, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while not (row := watch.execute(
                """SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                   WHERE c.relname = 'agent_snapshots' AND NOT l.granted
                     AND l.mode = 'AccessExclusiveLock'""").fetchone()):
                assert time.monotonic() < deadline and replaying.is_alive()
                time.sleep(0.01)
            cancelled_at = time.monotonic()
            watch.execute("SELECT pg_cancel_backend(%s)", row)
            replaying.join(30)
        waited = time.monotonic() - cancelled_at
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
    assert waited < 10  # no second try of 60 s
    assert leftovers(db) == []


def test_read_plan_streams_through_the_record_index(db: str) -> None:
    """Replay's cursor reads the log in index order: no sort of the whole log anywhere."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        conn.execute(bench_sql("fixture_replay"), {"start": 1, "stop": 20000})
        conn.execute("ANALYZE public.sync_changes")
        with conn.transaction():
            # Planned as the replay's server-side cursor is: for a fast start.
            plan = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN DECLARE c NO SCROLL CURSOR FOR " + load("journal/log_read")))
    assert "idx_sync_changes_table_record_created" in plan and "Sort" not in plan, plan
