"""The projection against a real server: apply, checkpoint, late commits, quarantine."""

from __future__ import annotations

import psycopg
import pytest

from consumer.db import aconnect
from consumer.errors import CheckpointConflict
from consumer.projection import Projector, advance_checkpoint, read_checkpoint
from tests.logtools import actual_snapshots, agent, expected_snapshots, mission, write

pytestmark = pytest.mark.anyio


async def project(dsn: str, **kwargs) -> Projector:
    projector = Projector(**kwargs)
    async with await aconnect(dsn) as conn:
        await projector.bootstrap(conn)
        await projector.catch_up(conn)
    return projector


async def test_rows_are_applied_and_equal_the_fold(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active", title="one", nextRunAt="2026-01-01T00:00:00.000Z")
        mission(conn, "m1", title="two")
        agent(conn, "a1", name="Ada", state="active")
        write(conn, "notes", "n1", {"x": 1})  # not ours
    await project(db)
    actual = actual_snapshots(db)
    assert actual == expected_snapshots(db)
    assert actual["missions"][("u1", "m1")]["title"] == "two"
    assert actual["agents"][("u1", "a1")]["name"] == "Ada"


async def test_bootstrap_folds_rows_that_predate_the_trigger(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        mission(conn, "old", state="active")
        conn.execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_journal")
        mission(conn, "new", state="active")
        assert conn.execute("SELECT count(*) FROM mana_ai.journal").fetchone() == (1,)
    await project(db)
    assert set(actual_snapshots(db)["missions"]) == {("u1", "old"), ("u1", "new")}


async def test_late_commit_is_applied_and_holds_back_only_the_checkpoint(db: str) -> None:
    projector = Projector()
    async with await aconnect(db) as work:
        await projector.bootstrap(work)
        late = psycopg.connect(db)  # a transaction that starts early and commits late
        mission(late, "late", state="active")
        late_xid = int(late.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "quick", state="active")
        await projector.catch_up(work)
        snaps = actual_snapshots(db)["missions"]
        assert ("u1", "quick") in snaps and ("u1", "late") not in snaps
        async with work.transaction():
            cp = await read_checkpoint(work)
        assert cp.applied_below <= late_xid, "checkpoint passed an open transaction"
        late.commit()
        late.close()
        await projector.catch_up(work)
        assert ("u1", "late") in actual_snapshots(db)["missions"]
        async with work.transaction():
            cp = await read_checkpoint(work)
        assert cp.applied_below > late_xid
    assert actual_snapshots(db) == expected_snapshots(db)


async def test_small_batches_and_restart_converge(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(50):
            mission(conn, f"m{i % 7}", state="active", n=i, user=f"u{i % 3}")
    first = await project(db, batch_size=4)
    assert first.cp is not None
    # A second consumer starting from the durable checkpoint finds nothing new to change.
    second = await project(db, batch_size=3)
    assert actual_snapshots(db) == expected_snapshots(db)
    assert second.cp is not None and second.cp.applied_below >= first.cp.applied_below


async def test_checkpoint_compare_and_set_fails_loudly(db: str) -> None:
    async with await aconnect(db) as a, await aconnect(db) as b:
        async with a.transaction():
            cp_a = await read_checkpoint(a)
        async with b.transaction():
            cp_b = await read_checkpoint(b)
        async with a.transaction():
            await advance_checkpoint(a, cp_a, cp_a.applied_below)
        with pytest.raises(CheckpointConflict):
            async with b.transaction():
                await advance_checkpoint(b, cp_b, cp_b.applied_below)


@pytest.mark.parametrize(
    ("op", "data", "field_meta", "reason"),
    [
        ("upsert", '{"a": 1}', "{}", "unknown op"),
        ("update", "[1, 2]", "{}", "not a JSON object"),
        ("update", '"text"', "{}", "not a JSON object"),
        ("update", '{"a": 1}', '["x"]', "field_meta"),
        ("update", '{"big": "' + "x" * 2000 + '"}', "{}", "too large"),
        ("update", '{"a": 1}', "{}", "empty"),  # empty record id, below
    ],
)
async def test_each_quarantine_cause_and_good_rows_survive(
    db: str, op: str, data: str, field_meta: str, reason: str
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE public.sync_changes DROP CONSTRAINT IF EXISTS sync_changes_op_check"
        )
        mission(conn, "good1", state="active")
        record_id = "" if reason == "empty" else "bad"
        conn.execute(
            """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op,
                   data, field_meta, client_id) VALUES ('ai', 'aiMissions', %s, 'u1', %s,
                   %s::jsonb, %s::jsonb, 'c')""",
            (record_id, op, data, field_meta),
        )
        mission(conn, "good2", state="active")
    projector = await project(db, max_row_bytes=1000)
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT reason, raw->>'record_id' FROM mana_ai.quarantine").fetchall()
    assert len(rows) == 1 and reason in rows[0][0]
    assert set(actual_snapshots(db)["missions"]) == {("u1", "good1"), ("u1", "good2")}
    # Read again (a restart): stored once, not twice.
    projector.forget()
    async with await aconnect(db) as conn:
        await projector.catch_up(conn)
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM mana_ai.quarantine").fetchone() == (1,)


async def test_deletes_are_final_and_deleted_agents_leave_the_snapshot(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
        write(conn, "aiMissions", "m1", None, op="delete")
        mission(conn, "m1", state="active", title="zombie")
        agent(conn, "a1", name="A", state="active")
        agent(conn, "a1", deletedAt="2026-01-01T00:00:00Z")
        mission(conn, "m2", state="active", deletedAt="2026-01-01T00:00:00Z")
    await project(db)
    snaps = actual_snapshots(db)
    assert ("u1", "m1") not in snaps["missions"]
    assert ("u1", "a1") not in snaps["agents"]
    assert snaps["missions"][("u1", "m2")]["deletedAt"]
    assert snaps == expected_snapshots(db)


async def test_journal_is_pruned_behind_the_checkpoint(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for i in range(5):
            mission(conn, f"m{i}", state="active")
    projector = await project(db)
    async with await aconnect(db, autocommit=True) as conn:
        assert await projector.prune(conn) == 5
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM mana_ai.journal").fetchone() == (0,)


async def test_a_row_the_merge_cannot_store_is_quarantined_and_its_neighbours_apply(
    db: str,
) -> None:
    """An integer past 64 bits is valid JSON and valid jsonb, but cannot be stored in the
    clocks: that row alone goes to quarantine, the stream goes on."""
    with psycopg.connect(db, autocommit=True) as conn:
        with conn.transaction():  # one transaction: the rows land in one batch
            mission(conn, "m1", state="active", title="before")
            conn.execute(
                """INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id,
                       op, data, client_id) VALUES ('ai', 'aiMissions', 'm1', 'u1', 'update',
                       '{"huge": 123456789012345678901234567890}', 'c')"""
            )
            # Rows of one transaction share created_at: stamp this one later to win.
            write(conn, "aiMissions", "m1", {"title": "after"},
                  field_meta={"title": "2030-01-01T00:00:00Z"})
            mission(conn, "m2", state="active")
    await project(db)
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT reason, raw->>'record_id' FROM mana_ai.quarantine").fetchall()
    assert len(rows) == 1 and rows[0][1] == "m1" and rows[0][0].startswith("unmergeable")
    snaps = actual_snapshots(db)["missions"]
    assert snaps[("u1", "m1")]["title"] == "after" and "huge" not in snaps[("u1", "m1")]
    assert ("u1", "m2") in snaps
