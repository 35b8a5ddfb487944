"""The projection against a real server: apply, checkpoint, late commits, quarantine."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.string import TextBinaryLoader, TextLoader

from consumer.db import aconnect
from consumer.errors import CheckpointConflict, ConfigError, is_transient
from consumer.projection import Projector, advance_checkpoint, read_checkpoint
from tests.helpers import metric
from tests.logtools import actual_snapshots, agent, expected_snapshots, mission, write

pytestmark = pytest.mark.anyio


async def project(dsn: str, **kwargs) -> Projector:
    projector = Projector(**kwargs)
    async with await aconnect(dsn, role="test") as conn:
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
    async with await aconnect(db, role="test") as work:
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
    async with await aconnect(db, role="test") as a, await aconnect(db, role="test") as b:
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
    async with await aconnect(db, role="test") as conn:
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
    async with await aconnect(db, role="test", autocommit=True) as conn:
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


def quarantine(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT change_id::text, reason FROM mana_ai.quarantine").fetchall()
    return dict(rows)


async def test_a_vanished_log_row_is_quarantined_counted_and_passed_over(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "before", state="active")
        with conn.transaction():  # inserted and deleted before commit: journaled, gone
            gone = mission(conn, "ghost", state="active")
            conn.execute("DELETE FROM public.sync_changes WHERE id = %s", (gone,))
        purged = mission(conn, "purged", state="active")
        conn.execute("DELETE FROM public.sync_changes WHERE id = %s", (purged,))
        mission(conn, "after", state="active")
    counted = metric("mana_ai_quarantined_rows_total", {"reason": "log_row_missing"})
    projector = await project(db, batch_size=2)
    assert quarantine(db) == {gone: "log-row-missing", purged: "log-row-missing"}
    assert metric("mana_ai_quarantined_rows_total", {"reason": "log_row_missing"}) == counted + 2
    assert set(actual_snapshots(db)["missions"]) == {("u1", "before"), ("u1", "after")}
    assert actual_snapshots(db) == expected_snapshots(db)
    # Read again (a restart between checkpoint and watermark): counted once, not twice.
    async with await aconnect(db, role="test") as conn:
        projector.forget()
        await projector.catch_up(conn)
    assert metric("mana_ai_quarantined_rows_total", {"reason": "log_row_missing"}) == counted + 2


def _role_without_bypassrls(admin: psycopg.Connection, role: str) -> None:
    admin.execute(f"CREATE ROLE {role} LOGIN NOBYPASSRLS")
    admin.execute(f'GRANT CREATE ON DATABASE "{admin.info.dbname}" TO {role}')
    admin.execute(f"GRANT USAGE ON SCHEMA mana_ai TO {role}")
    admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA mana_ai TO {role}")
    admin.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA mana_ai TO {role}")
    admin.execute(f"GRANT SELECT ON public.sync_changes TO {role}")


async def test_bootstrap_refuses_when_rows_may_be_hidden_and_stays_undone(db: str) -> None:
    role = f"nobypass_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as admin:
        admin.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        mission(admin, "old", state="active")  # predates the trigger: only the scan sees it
        admin.execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_journal")
        _role_without_bypassrls(admin, role)
    try:
        projector = Projector()
        async with await aconnect(make_conninfo(db, user=role), role="test") as conn:
            with pytest.raises(ConfigError) as refused:
                await projector.bootstrap(conn)
        line = str(refused.value)
        assert "\n" not in line and "BYPASSRLS" in line and role in line
        assert line.startswith("bootstrap:")
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT bootstrapped FROM mana_ai.checkpoint WHERE name = 'projection'"
            ).fetchone()
        assert row == (False,)
        assert actual_snapshots(db)["missions"] == {}
    finally:
        with psycopg.connect(db, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


async def test_rows_hidden_by_rls_stay_a_configuration_error(db: str) -> None:
    role = f"nobypass_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db, autocommit=True) as admin:
        mission(admin, "m1", state="active")
        _role_without_bypassrls(admin, role)
        admin.execute("UPDATE mana_ai.checkpoint SET bootstrapped = true")
    try:
        async with await aconnect(make_conninfo(db, user=role), role="test") as conn:
            with pytest.raises(ConfigError, match="hidden by row level security.*BYPASSRLS"):
                await Projector().catch_up(conn)
        assert quarantine(db) == {}  # not mistaken for a vanished row
    finally:
        with psycopg.connect(db, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


async def test_rows_the_driver_or_decoder_cannot_handle_are_quarantined_alone(db: str) -> None:
    deep = "[" * 1500 + "]" * 1500
    with psycopg.connect(db, autocommit=True) as conn:
        good = [mission(conn, "g1", state="active")]
        bad = {
            write(conn, "aiMissions", "inf", {"a": 1}, created_at="infinity"): "created_at out",
            write(conn, "aiMissions", "ninf", {"a": 1}, created_at="-infinity"): "created_at out",
            write(conn, "aiMissions", "y10k", {"a": 1}, created_at="10000-01-01"): "created_at out",
            write(conn, "aiMissions", "bc", {"a": 1}, created_at="0044-03-15 BC"): "created_at out",
        }
        cid = str(uuid.uuid4())
        conn.execute(
            """INSERT INTO public.sync_changes (id, app_id, table_name, record_id, user_id, op,
                   data, client_id) VALUES (%s, 'ai', 'aiMissions', 'deep', 'u1', 'update',
                   %s::jsonb, 'c')""",
            (cid, '{"x": ' + deep + "}"),
        )
        bad[cid] = "data nested too deeply"
        cid = str(uuid.uuid4())
        conn.execute(
            """INSERT INTO public.sync_changes (id, app_id, table_name, record_id, user_id, op,
                   data, client_id) VALUES (%s, 'ai', 'aiMissions', 'big', 'u1', 'update',
                   '{"x": 1e400}'::jsonb, 'c')""",
            (cid,),
        )
        bad[cid] = "unmergeable"  # jsonb keeps 1e400 as a 401-digit integer
        good.append(mission(conn, "g2", state="active"))
    for batch_size in (2000, 3):
        async with await aconnect(db, role="test") as conn:
            await conn.execute("TRUNCATE mana_ai.quarantine, mana_ai.mission_snapshots")
            await conn.execute("TRUNCATE mana_ai.record_clocks")
            await conn.execute("UPDATE mana_ai.checkpoint SET applied_below = '1'")
            await conn.commit()
        await project(db, batch_size=batch_size)
        found = quarantine(db)
        assert set(found) == set(bad)
        for change_id, reason in bad.items():
            assert found[change_id].startswith(reason), found[change_id]
        assert set(actual_snapshots(db)["missions"]) == {("u1", "g1"), ("u1", "g2")}
        assert actual_snapshots(db) == expected_snapshots(db, exclude=bad)


class _PoisonLoader(TextLoader):
    """Fails to load one text value, as the driver fails on values it cannot represent."""

    def load(self, data):  # type: ignore[no-untyped-def]
        if bytes(data) == b"poison-load":
            raise psycopg.DataError("cannot load this value")
        return super().load(data)


class _PoisonBinaryLoader(TextBinaryLoader):
    """The same for a value in binary format."""

    def load(self, data):  # type: ignore[no-untyped-def]
        if bytes(data) == b"poison-load":
            raise psycopg.DataError("cannot load this value")
        return super().load(data)


POISON_TRIGGER = """
CREATE FUNCTION mana_ai.test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.mission_id = 'poison-server' THEN
        RAISE EXCEPTION 'the server rejects this row' USING ERRCODE = '22023';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_poison BEFORE INSERT OR UPDATE ON mana_ai.mission_snapshots
    FOR EACH ROW EXECUTE FUNCTION mana_ai.test_poison();
"""


@pytest.mark.parametrize("batch_size", [2000, 2])
async def test_a_chunk_that_fails_as_a_whole_is_applied_row_by_row(
    db: str, batch_size: int
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(POISON_TRIGGER)
        before = mission(conn, "g1", state="active")
        rejected = mission(conn, "poison-server", state="active")
        unloadable = mission(conn, "poison-load", state="active")
        after = mission(conn, "g2", state="active")
        conn.execute("UPDATE mana_ai.checkpoint SET bootstrapped = true")  # the journal path
    assert not is_transient(psycopg.DataError("cannot load this value"))
    projector = Projector(batch_size=batch_size)
    async with await aconnect(db, role="test") as conn:
        conn.adapters.register_loader("text", _PoisonLoader)
        conn.adapters.register_loader("text", _PoisonBinaryLoader)  # journal reads are binary
        await projector.bootstrap(conn)
        await projector.catch_up(conn)
        await projector.catch_up(conn)  # and the next pass goes on from there
    found = quarantine(db)
    assert set(found) == {rejected, unloadable}, found
    assert found[rejected].startswith("unapplicable: ") and "rejects" in found[rejected]
    assert found[unloadable].startswith("unapplicable: DataError")
    assert set(actual_snapshots(db)["missions"]) == {("u1", "g1"), ("u1", "g2")}
    assert before and after
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT raw->>'record_id' FROM mana_ai.quarantine WHERE change_id = %s",
            (unloadable,),
        ).fetchone()
    assert row == ("poison-load",)  # the raw row came from the log, not through the driver
    assert projector.cp is not None and projector.prev is not None
    assert str(projector.cp.applied_below) == projector.prev.split(":")[0]  # checkpoint moved


async def test_bootstrap_applies_a_failing_batch_row_by_row(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(POISON_TRIGGER)
        conn.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        mission(conn, "g1", state="active")
        rejected = mission(conn, "poison-server", state="active")
        mission(conn, "g2", state="active")
        conn.execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_journal")
    await project(db)
    assert set(quarantine(db)) == {rejected}
    assert set(actual_snapshots(db)["missions"]) == {("u1", "g1"), ("u1", "g2")}


async def test_a_projector_moved_to_a_new_connection_reads_and_writes_on_it(db: str) -> None:
    """The chunk path keeps its cursors per work connection: after a reconnect (with or
    without `forget`) every pass runs on the connection it is given, not on a closed one."""
    projector = Projector()
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m1", state="active")
    async with await aconnect(db, role="test") as first:
        await projector.bootstrap(first)
        assert (await projector.catch_up(first)).rows == 1
    with psycopg.connect(db, autocommit=True) as conn:
        mission(conn, "m2", state="active")
    async with await aconnect(db, role="test") as second:  # the first one is closed
        assert (await projector.catch_up(second)).rows == 1
        projector.forget()
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "m3", state="active")
        assert (await projector.catch_up(second)).rows >= 1
    assert set(actual_snapshots(db)["missions"]) == {("u1", "m1"), ("u1", "m2"), ("u1", "m3")}
    assert actual_snapshots(db) == expected_snapshots(db)
