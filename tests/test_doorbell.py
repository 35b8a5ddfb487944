"""The armed doorbell against a real server: commits ring only while the consumer is parked
on them, an idle consumer wakes on the first row, and a writer racing the arming is applied
at once (not by the safety poll)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

import anyio
import psycopg
import pytest

from consumer.config import Settings
from consumer.listener import CHANNEL
from consumer.locks import DOORBELL as DOORBELL_LOCK_KEY
from consumer.service import serve
from consumer.sql import schema_dir
from tests.helpers import wait_for, wait_for_async
from tests.logtools import actual_snapshots, expected_snapshots, mission, write

pytestmark = pytest.mark.anyio

# Every wake-up these tests wait for must come from a ring or a re-check, never from the
# safety poll or the idle probe's timeout.
SLOW = 60.0


def settings(dsn: str) -> Settings:
    return Settings(
        database_url=dsn, metrics_port=0, scheduler=False, idle_probe=SLOW, safety_poll=SLOW,
        reconnect_max=1.0,
    )


class Bell(threading.Thread):
    """A second LISTEN connection: counts the doorbell's rings (one per notifying commit)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rings = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.ready.set()
            while not self.stop.is_set():
                for _ in conn.notifies(timeout=0.05):
                    self.rings += 1

    def __enter__(self) -> Bell:
        self.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # the last commits' rings arrive
        self.stop.set()
        self.join(5)


def armed(dsn: str) -> bool:
    """Some session holds the doorbell's lock exclusively (the consumer is parked)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database
                                                           WHERE datname = current_database())
                 AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1
                 AND mode = 'ExclusiveLock' AND granted""",
            (DOORBELL_LOCK_KEY >> 32, DOORBELL_LOCK_KEY & 0xFFFFFFFF),
        ).fetchone()
    return bool(row and row[0])


def applied(dsn: str, mission_id: str) -> Callable[[], bool]:
    return lambda: ("u1", mission_id) in actual_snapshots(dsn)["missions"]


def test_the_migration_and_the_consumer_name_the_same_lock() -> None:
    text = (schema_dir() / "migrations" / "0010_armed_doorbell.sql").read_text()
    assert re.findall(r"pg_try_advisory_xact_lock_shared\((\d+)\)", text) == [
        str(DOORBELL_LOCK_KEY)
    ]


def test_commits_ring_only_while_the_doorbell_is_armed(db: str) -> None:
    with Bell(db) as bell, psycopg.connect(db, autocommit=True) as writer:
        for i in range(20):
            mission(writer, f"quiet{i}", state="active")
        time.sleep(0.3)
        assert bell.rings == 0, "a commit rang while nobody was parked"
        with psycopg.connect(db, autocommit=True) as consumer:
            consumer.execute("SELECT pg_advisory_lock(%s)", (DOORBELL_LOCK_KEY,))
            for i in range(5):
                mission(writer, f"loud{i}", state="active")
            with writer.transaction():  # two rows, one commit: one ring
                mission(writer, "pair-a", state="active")
                mission(writer, "pair-b", state="active")
            write(writer, "notes", "n1", {"x": 1})  # not ours: not journaled, no ring
            wait_for(lambda: bell.rings >= 6, 5, "six rings")
            time.sleep(0.2)
            assert bell.rings == 6
            consumer.execute("SELECT pg_advisory_unlock(%s)", (DOORBELL_LOCK_KEY,))
        # Disarmed: quiet again.
        mission(writer, "after", state="active")
        time.sleep(0.3)
        assert bell.rings == 6


async def test_an_idle_consumer_wakes_on_the_first_row_within_milliseconds(db: str) -> None:
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(settings(db), ready=ready))
        await ready.wait()
        await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")
        with Bell(db) as bell:
            with psycopg.connect(db, autocommit=True) as conn:
                mission(conn, "first", state="active")
            took = await wait_for_async(applied(db, "first"), 5, "first applied")
        # Milliseconds on an idle machine; the bound leaves room for a shared one, far
        # below the safety poll (60 s) and the idle probe (60 s).
        assert took < 2.0, took
        assert bell.rings == 1
        await wait_for_async(lambda: armed(db), 15, "parked again")  # the journal is empty
        tg.cancel_scope.cancel()


async def test_a_work_session_ended_while_parked_is_noticed_without_the_safety_poll(
    db: str,
) -> None:
    """The parked consumer's work session holds the doorbell. Ended (terminated), its lock
    goes with it and commits stop ringing: the consumer must notice within a second or so
    (it looks at the idle work connection every WORK_CHECK), reconnect, and apply a row
    written meanwhile, long before the safety poll or the idle probe (60 s here)."""
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(settings(db), ready=ready))
        await ready.wait()
        await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")
        with psycopg.connect(db, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE %s",
                ("%/work",),
            ).fetchall()
            assert ended == [(True,)], ended
            mission(admin, "after", state="active")  # nobody armed: it does not ring
        took = await wait_for_async(applied(db, "after"), 10, "the row written after the end")
        assert took < 5.0, took
        await wait_for_async(lambda: armed(db), 15, "parked again on a new work session")
        tg.cancel_scope.cancel()


async def test_a_writer_that_began_before_the_arming_and_commits_after_it_rings(
    db: str,
) -> None:
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(settings(db), ready=ready))
        await ready.wait()
        with psycopg.connect(db, autocommit=True) as conn, Bell(db) as bell:
            # The row is written while the consumer may be anywhere; it parks meanwhile.
            with conn.transaction():
                mission(conn, "early", state="active")
                await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")
            took = await wait_for_async(applied(db, "early"), 5, "early applied")
        assert took < 2.0, took
        assert bell.rings == 1
        tg.cancel_scope.cancel()


async def test_a_commit_that_found_the_doorbell_down_keeps_the_consumer_from_parking(
    db: str,
) -> None:
    """The race itself: a writer's commit reads the flag as down, then the consumer tries to
    arm before that commit is visible. Here the writer's transaction holds the shared lock
    from its first row on (constraints immediate) while the consumer starts and finds the
    journal empty, so the window stays open for a second: the consumer must not park on a
    journal that looked empty, and must apply the row as soon as it commits."""
    async with anyio.create_task_group() as tg:
        with psycopg.connect(db, autocommit=True) as conn, Bell(db) as bell:
            with conn.transaction():
                conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                mission(conn, "racer", state="active")  # takes the lock shared: no ring
                ready = anyio.Event()
                tg.start_soon(lambda: serve(settings(db), ready=ready))
                await ready.wait()
                await anyio.sleep(1.0)
                assert not armed(db), "parked while a writer's commit was pending"
            committed = time.monotonic()
            await wait_for_async(applied(db, "racer"), 5, "racer applied")
            took = time.monotonic() - committed
        assert took < 2.0, took
        assert bell.rings == 0
        await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("collect", [0.0, 0.005], ids=["read-at-once", "collect-5ms"])
async def test_a_busy_writer_is_applied_whole_and_rung_only_while_the_consumer_parks(
    db: str, collect: float
) -> None:
    """By default a consumer that keeps up parks between rows, armed, and each row rings
    (a pass woken by a lone row stays armed, so rows committed meanwhile ring too: none is
    lost). With a collection window, a pass that read rows does not arm: a busy writer is
    collected unrung."""
    rows = 400
    cfg = settings(db)
    cfg.batch_max_wait = collect
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(cfg, ready=ready))
        await ready.wait()
        await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")

        def busy() -> None:
            with psycopg.connect(db, autocommit=True) as conn:
                for i in range(rows):
                    mission(conn, f"busy{i % 17}", state="active", n=i)

        with Bell(db) as bell:
            await anyio.to_thread.run_sync(busy)
            await wait_for_async(
                lambda: actual_snapshots(db) == expected_snapshots(db), 20, "snapshots == fold"
            )
        print(f"busy writer, collect {collect}: {bell.rings} rings for {rows} commits")
        if collect:
            # Every commit rang before the doorbell was armed; now only those that find
            # the consumer parked do. A shared machine can stall the writer long enough
            # for the consumer to park between rows, so the bound is loose.
            assert bell.rings < rows / 4, bell.rings
        else:
            assert bell.rings <= rows, bell.rings  # at most one ring per commit
        await wait_for_async(lambda: armed(db), 15, "the consumer to park again")
        tg.cancel_scope.cancel()
