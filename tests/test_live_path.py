"""The lean live path against a real server: a lone row goes at once, rows that keep coming
are collected per window, and a quiet pass writes nothing."""

from __future__ import annotations

import time

import anyio
import psycopg
import pytest

from consumer.apply import Applied
from consumer.config import Settings
from consumer.projection import Projector
from consumer.service import serve
from tests.helpers import checkpoint_version, wait_for_async
from tests.logtools import mission
from tests.test_doorbell import Bell, applied, armed

pytestmark = pytest.mark.anyio


async def test_quiet_passes_move_the_checkpoint_only_now_and_then(db: str) -> None:
    projector = Projector()
    projector.quiet_checkpoint_every = 3600.0
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        await projector.catch_up(conn)
        before = checkpoint_version(db)
        with psycopg.connect(db, autocommit=True) as writer:
            writer.execute("SELECT pg_current_xact_id()")  # the watermark moves on
        for _ in range(3):
            await projector.catch_up(conn)
            assert projector.last_read == 0
        assert checkpoint_version(db) == before, "a pass that read nothing wrote"
        with psycopg.connect(db, autocommit=True) as writer:
            mission(writer, "m1", state="active")
        await projector.catch_up(conn)
        assert projector.last_read == 1
        assert checkpoint_version(db) == before + 1  # a pass with rows always moves it
        projector.quiet_checkpoint_every = 0.0
        with psycopg.connect(db, autocommit=True) as writer:
            writer.execute("SELECT pg_current_xact_id()")
        await projector.catch_up(conn)
        assert checkpoint_version(db) == before + 2  # its interval passed: it moves again


async def test_a_lone_row_goes_at_once_and_rows_that_keep_coming_are_collected(
    db: str,
) -> None:
    batches: list[set[str]] = []

    def seen(done: Applied) -> None:
        batches.append({mission_id for _, mission_id in done.missions})

    # A long window, so that rows written back to back fall in one on any machine.
    cfg = Settings(database_url=db, metrics_port=0, scheduler=False, idle_probe=60.0,
                   safety_poll=60.0, batch_max_wait=0.5)
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(cfg, ready=ready, on_applied=seen))
        await ready.wait()
        await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")
        with psycopg.connect(db, autocommit=True) as conn:
            mission(conn, "lone", state="active")
            took = await wait_for_async(applied(db, "lone"), 5, "lone applied")
            # At once: well inside the window it would otherwise have waited.
            assert took < 0.4, took

            def more() -> None:  # the consumer runs meanwhile (this is another thread)
                for i in range(4):
                    mission(conn, f"next{i}", state="active")
                    time.sleep(0.01)

            await anyio.to_thread.run_sync(more)
        await wait_for_async(applied(db, "next3"), 5, "next3 applied")
        tg.cancel_scope.cancel()
    assert batches[0] == {"lone"}
    # The first row of the stream rings a consumer parked after the lone row; the rest
    # come during its window and go in one pass.
    assert set().union(*batches[1:]) == {f"next{i}" for i in range(4)}, batches
    assert len(batches[1:]) <= 2, batches


async def test_rows_that_keep_coming_are_applied_without_a_ring_each(db: str) -> None:
    """A steady stream keeps the consumer polling: it does not park between rows."""
    cfg = Settings(database_url=db, metrics_port=0, scheduler=False, idle_probe=60.0,
                   safety_poll=60.0, batch_max_wait=0.05)
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(lambda: serve(cfg, ready=ready))
        await ready.wait()
        await wait_for_async(lambda: armed(db), 15, "the consumer to park armed")

        def steady() -> None:
            with psycopg.connect(db, autocommit=True) as conn:
                for i in range(30):
                    mission(conn, f"s{i}", state="active")
                    time.sleep(0.02)  # gaps shorter than the window

        with Bell(db) as bell:
            await anyio.to_thread.run_sync(steady)
            await wait_for_async(applied(db, "s29"), 5, "s29 applied")
        assert bell.rings <= 3, bell.rings  # the first row, and a stall of the writer or two
        tg.cancel_scope.cancel()
