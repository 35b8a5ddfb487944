"""The record-grouped catch-up (windows) against a real server: it writes exactly what the
row path writes, and a window cut short leaves a checkpoint the snapshots agree with."""

from __future__ import annotations

import gc
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumer.apply import Window
from consumer.db import aconnect
from consumer.merge import decode_state
from consumer.projection import Projector
from tests.logtools import actual_snapshots, expected_snapshots

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INSERT = """INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id, created_at)
    VALUES (%s, 'ai', %s, %s, 'u1', %s, %s::jsonb, %s::jsonb, 'test', %s)"""

# What each projection leaves behind, compared between the two paths.
STATE_SQL = {
    "missions": "SELECT user_id, mission_id, record, last_applied_at "
    "FROM mana_ai.mission_snapshots",
    "agents": "SELECT user_id, agent_id, record, last_applied_at FROM mana_ai.agent_snapshots",
    "clocks": "SELECT kind, user_id, record_id, state FROM mana_ai.record_clocks",
    "due": "SELECT user_id, mission_id, due_at FROM mana_ai.mission_due",
    "quarantine": "SELECT change_id::text, reason FROM mana_ai.quarantine",
}
RESET = """TRUNCATE mana_ai.mission_snapshots, mana_ai.agent_snapshots, mana_ai.record_clocks,
    mana_ai.mission_due, mana_ai.quarantine"""


def stored(dsn: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for name, query in STATE_SQL.items():
            rows = conn.execute(query).fetchall()
            if name == "clocks":  # equal states, whatever their byte order
                rows = [(*r[:3], decode_state(r[3])) for r in rows]
            out[name] = sorted(rows, key=repr)
        # The checkpoint went past every journal row (its value is the watermark of the
        # moment, so the two runs differ in it).
        out["checkpoint_past_all"] = conn.execute(
            """SELECT coalesce(max(j.xid) < c.applied_below, true)
               FROM mana_ai.checkpoint c, mana_ai.journal j
               WHERE c.name = 'projection' GROUP BY c.applied_below"""
        ).fetchone() in (None, (True,))
    return out


async def project(dsn: str, projector: Projector) -> None:
    async with await aconnect(dsn, role="test") as conn:
        await projector.bootstrap(conn)
        await projector.catch_up(conn)


# One row of traffic: (record, kind of row, field, value, created_at offset in ms, stamp
# offset in ms or None). Kinds: ordinary writes, deletes, and rows that go to quarantine
# (unknown op, data that is not an object, a payload over the limit, an integer the
# clocks cannot store) or whose log row is gone.
ROW = st.tuples(
    st.integers(0, 5),
    st.sampled_from(
        ["write"] * 6 + ["delete", "bad-op", "not-object", "too-large", "huge-int", "missing"]
    ),
    st.sampled_from(["title", "state", "nextRunAt", "deletedAt"]),
    st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b", ""])),
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(0, 5)),
)


def load_traffic(dsn: str, rows: list[tuple], groups: list[int]) -> None:
    """Insert the rows in transactions of the given sizes (rows of one transaction share
    an xid and come back in change id order: a random interleaving of records)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        it = iter(rows)
        for size in groups:
            batch = [r for _, r in zip(range(size), it, strict=False)]
            if not batch:
                break
            gone: list[str] = []
            with conn.transaction():
                for record, kind, field, value, created, stamp in batch:
                    change_id = str(uuid.uuid4())
                    table = "aiMissions" if record % 2 == 0 else "agents"
                    op = {"delete": "delete", "bad-op": "upsert"}.get(kind, "update")
                    data: Any = {field: value}
                    if field == "nextRunAt" and value is not None:
                        data = {field: (T0 + timedelta(hours=int(bool(value)))).isoformat()}
                    if kind == "not-object":
                        data = [value]
                    elif kind == "too-large":
                        data = {field: "x" * 600}
                    at = T0 + timedelta(milliseconds=stamp or 0)
                    meta = {} if stamp is None else {field: at.isoformat()}
                    text = json.dumps(data)
                    if kind == "huge-int":
                        text = '{"' + field + '": 123456789012345678901234567890}'
                    conn.execute(
                        INSERT,
                        (change_id, table, f"r{record}", op, text, json.dumps(meta),
                         T0 + timedelta(milliseconds=created)),
                    )
                    if kind == "missing":
                        gone.append(change_id)
            for change_id in gone:  # journaled, then gone from the log
                conn.execute("DELETE FROM public.sync_changes WHERE id = %s", (change_id,))


def bootstrapped(dsn: str) -> tuple:
    """Mark the bootstrap done (the log has nothing older than the journal); returns the
    checkpoint to `reset` to."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE mana_ai.checkpoint SET bootstrapped = true")
        start = conn.execute(
            "SELECT applied_below::text FROM mana_ai.checkpoint WHERE name = 'projection'"
        ).fetchone()
    assert start is not None
    return start


def reset(dsn: str, checkpoint: tuple) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RESET)
        conn.execute(
            "UPDATE mana_ai.checkpoint SET applied_below = %s::xid8 WHERE name = 'projection'",
            checkpoint,
        )


@settings(
    max_examples=12,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(ROW, min_size=1, max_size=40),
    groups=st.lists(st.integers(1, 6), min_size=1, max_size=40),
)
async def test_windows_write_exactly_what_the_row_path_writes(
    db: str, rows: list[tuple], groups: list[int]
) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(RESET + ", public.sync_changes, mana_ai.journal")
        conn.execute(
            "ALTER TABLE public.sync_changes DROP CONSTRAINT IF EXISTS sync_changes_op_check"
        )
    start = bootstrapped(db)
    load_traffic(db, rows, groups + [len(rows)])
    # The row path: one row per chunk, never a window.
    await project(db, Projector(batch_size=1, window_rows=0, max_row_bytes=500))
    by_row = stored(db)
    reset(db, start)
    # Windows from the second chunk on, several per pass (so states carry over).
    await project(db, Projector(batch_size=2, window_rows=6, max_row_bytes=500))
    by_window = stored(db)
    assert by_window == by_row


async def test_a_window_killed_midway_leaves_a_checkpoint_the_snapshots_agree_with(
    db: str,
) -> None:
    """The connection dies inside a window (after some windows committed): the checkpoint
    and the snapshots are those of the committed windows, a prefix of the journal; the
    next pass ends where an uninterrupted one does."""
    rows = [(i % 7, "write", "title", i, i, None) for i in range(60)]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE mana_ai.checkpoint SET bootstrapped = true")
    load_traffic(db, rows, [3] * 20)  # 20 transactions: the checkpoint can stop between
    with psycopg.connect(db) as conn:
        journal = conn.execute(
            # Qualified: a bare `xid` would name the text output column, and '1000' < '999'.
            "SELECT j.xid::text, j.change_id::text FROM mana_ai.journal j "
            "ORDER BY j.xid, j.change_id"
        ).fetchall()

    with psycopg.connect(db) as conn:
        version_before = conn.execute(
            "SELECT version FROM mana_ai.checkpoint WHERE name = 'projection'"
        ).fetchone()[0]
    projector = Projector(batch_size=4, window_rows=16)
    calls = 0

    async with await aconnect(db, role="test") as work:
        pid = work.info.backend_pid

        def progressed() -> None:
            nonlocal calls
            calls += 1
            if calls == 9:  # the 1st chunk, a whole window (4 reads + its commit), 3 reads
                # Wait until the session is gone (the timeout argument): the signal alone
                # leaves it running until it is scheduled, and on a loaded machine the rest
                # of this window, commit included, could get through before it dies.
                with psycopg.connect(db, autocommit=True) as admin:
                    gone = admin.execute(
                        "SELECT pg_terminate_backend(%s, 10000)", (pid,)
                    ).fetchone()
                    assert gone == (True,)

        projector.on_progress = progressed
        await projector.bootstrap(work)
        with pytest.raises(psycopg.OperationalError):
            await projector.catch_up(work)
    assert calls >= 9  # a read already answered may still be folded

    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT applied_below::text, version FROM mana_ai.checkpoint "
            "WHERE name = 'projection'"
        ).fetchone()
    assert row is not None
    below = int(row[0])
    # The chunk (4 rows) and one window (16 rows) committed: the first 20 rows in journal
    # order. The checkpoint moved with each (how far also depends on transactions open
    # elsewhere on the server meanwhile), and no row left unapplied is below it.
    done, rest = journal[:20], journal[20:]
    assert row[1] >= version_before + 2
    assert all(int(xid) >= below for xid, _ in rest), (below, row[1], version_before, rest[:4])
    # The snapshots are the fold of exactly that prefix of the journal.
    prefix = {change_id for _, change_id in done}
    with psycopg.connect(db) as conn:
        others = [r[0] for r in conn.execute("SELECT id::text FROM public.sync_changes")]
    assert actual_snapshots(db) == expected_snapshots(db, exclude=set(others) - prefix)

    await project(db, Projector(batch_size=4, window_rows=16))
    assert actual_snapshots(db) == expected_snapshots(db)


async def test_an_unmergeable_row_is_quarantined_whatever_rows_it_comes_with(db: str) -> None:
    """An integer the clocks cannot store, overwritten by a later row of the same record:
    quarantined alike whether the row goes alone, in a chunk with that later row, or in a
    window; the later row applies in every case."""
    rows: list[tuple] = [
        (2, "write", "title", 1, 1, None),
        (2, "huge-int", "title", 0, 2, None),
        (2, "write", "title", 3, 3, None),
    ]
    start = bootstrapped(db)
    load_traffic(db, rows, [len(rows)])
    results = []
    for projector in (
        Projector(batch_size=1, window_rows=0),  # row by row
        Projector(batch_size=3, window_rows=0),  # one chunk
        Projector(batch_size=1, window_rows=10),  # a window after the first chunk
    ):
        await project(db, projector)
        results.append(stored(db))
        reset(db, start)
    assert results[0] == results[1] == results[2]
    (reason,) = [reason for _, reason in results[0]["quarantine"]]
    assert reason.startswith("unmergeable: OverflowError")
    (mission,) = results[0]["missions"]
    assert mission[2]["title"] == 3


async def test_after_a_failed_window_the_pass_goes_back_to_windows(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window that fails goes chunk by chunk over the rows it had read, then the pass
    opens windows again; it ends where the row path does."""
    rows: list[tuple] = [(i % 5, "write", "title", i, i, None) for i in range(40)]
    rows[3] = (3, "huge-int", "title", 0, 1000, None)  # quarantined on every path
    start = bootstrapped(db)
    load_traffic(db, rows, [1] * len(rows))
    await project(db, Projector(batch_size=1, window_rows=0))
    by_row = stored(db)
    reset(db, start)

    # Windows of 2 chunks (over 2 records at most), as many rows as they like.
    projector = Projector(batch_size=2, window_rows=1000, window_records=2)
    outcomes: list[object] = []
    window, chunk = projector._window, projector._chunk_or_rows
    collector_on: list[tuple[str, bool]] = []  # (after what, the collector on)

    async def watched(*args: Any) -> Any:
        try:
            step = await window(*args)
        except Exception:
            outcomes.append("failed")
            raise
        outcomes.append(step.rows)
        collector_on.append(("window", gc.isenabled()))
        return step

    async def watched_chunk(*args: Any) -> Any:
        collector_on.append(("chunk", gc.isenabled()))
        return await chunk(*args)

    projector._window = watched  # type: ignore[method-assign]
    projector._chunk_or_rows = watched_chunk  # type: ignore[method-assign]
    # The first window fails as it is about to write (whatever the cause: a value the
    # server refuses, a bug); windows after it do not.
    write = Window.write
    failures = iter([RuntimeError("the first window fails")])

    async def failing(self: Window, *args: Any) -> Any:
        if (error := next(failures, None)) is not None:
            raise error
        return await write(self, *args)

    monkeypatch.setattr(Window, "write", failing)
    await project(db, projector)
    assert outcomes[0] == "failed"
    # Windows again once the failed window's rows (3 chunks: 6) and one chunk more went by
    # chunks, not after window_rows more rows; the first chunk of the pass was a chunk too.
    assert len(outcomes) >= 2 and all(isinstance(n, int) for n in outcomes[1:]), outcomes
    assert sum(outcomes[1:]) == len(rows) - 2 - (6 + 2), outcomes  # type: ignore[arg-type]
    assert stored(db) == by_row
    assert [reason for _, reason in by_row["quarantine"]][0].startswith("unmergeable")
    # The collector stays paused from one window to the next, is back for the chunks that
    # follow a failed window, and when the pass ends.
    assert ("window", False) in collector_on and ("window", True) not in collector_on
    assert all(on for what, on in collector_on if what == "chunk"), collector_on
    assert gc.isenabled()


async def test_a_fresh_record_deleted_in_the_window_deletes_a_snapshot_stored_without_clocks(
    db: str,
) -> None:
    """A record with no stored clocks whose fold is not visible (deleted) goes the upsert
    path's way: a snapshot and due entry stored without clocks (say upstream's) are
    deleted, as the row path deletes them, rather than left behind by a COPY of clocks
    alone that meets no key."""
    rows: list[tuple] = [(i % 4, "write", "title", i, i, None) for i in range(24)]
    rows[21] = (2, "delete", "title", None, 100, None)  # r2 (a mission) deleted last
    start = bootstrapped(db)
    load_traffic(db, rows, [1] * len(rows))
    await project(db, Projector(batch_size=1, window_rows=0))
    by_row = stored(db)
    assert not [r for r in by_row["missions"] if r[1] == "r2"]
    reset(db, start)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record)
               VALUES ('u1', 'r2', '{"id": "r2", "title": "stale"}')"""
        )
        conn.execute(
            """INSERT INTO mana_ai.mission_due (user_id, mission_id, due_at)
               VALUES ('u1', 'r2', now())"""
        )
    projector = Projector(batch_size=2, window_rows=1000)
    steps: list[int] = []
    window = projector._window

    async def watched(*args: Any) -> Any:
        step = await window(*args)
        steps.append(step.rows)
        return step

    projector._window = watched  # type: ignore[method-assign]
    await project(db, projector)
    assert steps and sum(steps) == len(rows) - 2, steps  # all by one window, none failed
    assert stored(db) == by_row


class Cycle:
    def __init__(self) -> None:
        self.me = self  # freed only by the cyclic collector


async def test_a_long_pass_collects_what_others_drop_while_the_collector_is_paused(
    db: str,
) -> None:
    """Across a pass's windows the collector stays off, but past the pause's bound the
    garbage other tasks made and dropped meanwhile is collected, without waiting for the
    pass to end (here the bound is 0: at every window)."""
    import weakref

    bootstrapped(db)
    load_traffic(db, [(i % 7, "write", "title", i, i, None) for i in range(60)], [1] * 60)
    projector = Projector(batch_size=2, window_rows=6, window_records=100)
    projector._collector.bound = 0.0
    dropped: list[weakref.ref] = []
    seen: list[tuple[bool, int]] = []  # (collector on, cycles dropped earlier and not freed)

    def progress() -> None:
        seen.append((gc.isenabled(), sum(ref() is not None for ref in dropped)))
        dropped.append(weakref.ref(Cycle()))  # another task's garbage, made mid-pass

    projector.on_progress = progress
    assert gc.isenabled()
    await project(db, projector)
    paused = [left for on, left in seen if not on]
    assert len(paused) >= 12, seen  # several windows of 3 reads, the collector off in each
    # Each window's first read finds everything dropped before it freed: what is left is
    # never more than one window's reads made, and it comes back to none again and again.
    assert max(paused) <= 4, seen
    assert sum(left == 0 for left in paused[1:]) >= 3, seen
    assert gc.isenabled()
    assert stored(db)["checkpoint_past_all"]


async def test_a_fresh_record_that_is_stored_after_all_goes_by_chunks(db: str) -> None:
    """A window writes records without stored clocks by COPY (nothing of them should be
    stored). A snapshot stored without its clocks (say from before the clocks existed)
    makes that COPY meet the key: the window fails whole, its rows go by chunks, which
    upsert, and the pass ends where the row path does."""
    rows: list[tuple] = [(i % 4, "write", "title", i, i, None) for i in range(24)]
    start = bootstrapped(db)
    load_traffic(db, rows, [1] * len(rows))
    await project(db, Projector(batch_size=1, window_rows=0))
    by_row = stored(db)
    reset(db, start)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            """INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record)
               VALUES ('u1', 'r2', '{"id": "r2", "title": "stale"}')"""
        )
    projector = Projector(batch_size=2, window_rows=1000)
    outcomes: list[str] = []
    window = projector._window

    async def watched(*args: Any) -> Any:
        try:
            step = await window(*args)
        except psycopg.errors.UniqueViolation:
            outcomes.append("failed on the key")
            raise
        outcomes.append("applied")
        return step

    projector._window = watched  # type: ignore[method-assign]
    await project(db, projector)
    assert outcomes[0] == "failed on the key", outcomes
    assert stored(db) == by_row
