"""The run lifecycle end to end: retries, leases taken over from dead processes, exactly one
iteration per occurrence, runs on every replica, occurrences as instants, device clocks,
no planner. Real PostgreSQL; the planner is the stub over HTTP; `consumer run` processes
where a process has to die."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from consumer.db import aconnect
from consumer.errors import Deposed
from consumer.instants import parse_instant
from consumer.ledger import Claim, Occurrence, claim_many
from consumer.migrate import WRITE_ROLE, ensure_write_role
from consumer.planner import Planner, PlannerConfig
from consumer.projection import Projector
from consumer.runner import Runner
from consumer.scheduler import Scheduler
from consumer.status import collect
from consumer.telemetry import in_memory_provider, tracer
from tests.faultkit import LISTENER_APP, sessions
from tests.helpers import at, metric, open_pool, snapshot, wait_for
from tests.logtools import agent, mission, write
from tests.planner_stub import PlannerStub, max_overlap

KEY = "sk-runs-test-key"
PLAN = json.dumps({"summary": "ok", "steps": []})
FAST = {"backoff": 0.2, "attempts": 3, "lease": 5.0, "poll": 0.05}


def ledger(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            """SELECT mission_id, state, attempts, outcome, last_error, lease_owner
               FROM mana_ai.dispatch_ledger ORDER BY mission_id, due_at""")
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def iterations_written(dsn: str) -> Counter[str]:
    """Write-back rows carrying an iteration, per mission."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """SELECT record_id FROM public.sync_changes
               WHERE client_id = 'mana-ai-runner' AND data ? 'iterations'""").fetchall()
    return Counter(r[0] for r in rows)


class Env:
    """One process's scheduler + worker, the projection driven by the test."""

    def __init__(self, dsn: str, pool: AsyncConnectionPool, work: psycopg.AsyncConnection,
                 log: psycopg.Connection, stub: PlannerStub, planner: Planner) -> None:
        self.dsn, self.pool, self.work, self.log = dsn, pool, work, log
        self.stub, self.planner = stub, planner
        self.provider, self.exporter = in_memory_provider()
        self.tracer = tracer(self.provider)
        self.scheduler: Scheduler | None = None
        self.projector = Projector(on_applied=self._notify)

    def _notify(self, applied: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.notify_changed(applied)

    def make(self, *, planner: bool = True, **worker: Any) -> Scheduler:
        runner = Runner(self.pool, self.planner, tracer=self.tracer) if planner else None
        self.scheduler = Scheduler(
            self.pool, tracer=self.tracer, dispatcher=runner, claims=planner,
            worker_options={**FAST, **worker}, prune_every=0)
        return self.scheduler

    async def until(self, pred: Callable[[], bool], within: float = 10.0) -> None:
        """Apply the journal (the follower's job) until pred() holds."""
        with anyio.fail_after(within):
            while True:
                await self.projector.catch_up(self.work)
                if pred():
                    return
                await anyio.sleep(0.02)

    def decisions(self, mission_id: str) -> list[dict[str, Any]]:
        return [dict(s.attributes or {}) for s in self.exporter.get_finished_spans()
                if s.name == "mission.decision"
                and (s.attributes or {}).get("mission.id") == mission_id]


@pytest.fixture
def stub() -> Iterator[PlannerStub]:
    with PlannerStub(PLAN) as s:
        yield s


@pytest.fixture
async def env(db: str, stub: PlannerStub) -> AsyncIterator[Env]:
    config = PlannerConfig(base_url=stub.url, api_key=KEY, timeout=2.0)
    async with open_pool(db, max_size=6) as pool, Planner(config) as planner:
        async with await aconnect(db, role="test") as work:
            with psycopg.connect(db, autocommit=True) as log:
                e = Env(db, pool, work, log, stub, planner)
                await e.projector.bootstrap(work)
                yield e


@asynccontextmanager
async def running(s: Scheduler) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        yield
        tg.cancel_scope.cancel()


def moved(dsn: str, mission_id: str, due: str) -> bool:
    return snapshot(dsn, mission_id).get("nextRunAt") != due


# --------------------------------------------------------------------------- retries


@pytest.mark.anyio
@pytest.mark.parametrize("first", [
    {"status": 503, "headers": {"Retry-After": "0"}},
    {"content": "I would rather not."},
], ids=["503-then-200", "garbage-then-good"])
async def test_a_failed_attempt_is_tried_again_and_the_interval_moves_on(
    env: Env, first: dict[str, Any]
) -> None:
    due = at(-5)
    mission(env.log, "m1", state="active", nextRunAt=due, objective="o",
            cadence={"kind": "interval", "everyMinutes": 60})
    env.stub.script = [first]
    retries = metric("mana_ai_runs_total", {"outcome": "retry"})
    s = env.make()
    async with running(s):
        await env.until(lambda: moved(env.dsn, "m1", due))
    (row,) = ledger(env.dsn)
    assert (row["state"], row["attempts"], row["outcome"]) == ("done", 2, "written-back")
    assert row["last_error"]  # the first attempt's reason is kept
    assert len(env.stub.requests) == 2
    assert iterations_written(env.dsn) == {"m1": 1}
    assert len(snapshot(env.dsn, "m1")["iterations"]) == 1
    nxt = datetime.fromisoformat(snapshot(env.dsn, "m1")["nextRunAt"])
    assert timedelta(minutes=59) < nxt - datetime.now(UTC) <= timedelta(minutes=60)
    assert metric("mana_ai_runs_total", {"outcome": "retry"}) == retries + 1
    # Both attempts' run spans are children of the one decision span.
    spans = env.exporter.get_finished_spans()
    (decision,) = [sp for sp in spans if sp.name == "mission.decision"]
    runs = [sp for sp in spans if sp.name == "mission.run"]
    assert [dict(sp.attributes or {})["run.attempt"] for sp in runs] == [1, 2]
    assert all(sp.parent is not None and sp.parent.span_id == decision.context.span_id
               and sp.context.trace_id == decision.context.trace_id for sp in runs)


@pytest.mark.anyio
async def test_always_failing_ends_failed_and_the_interval_still_moves_on(env: Env) -> None:
    due = at(-5)
    mission(env.log, "m1", state="active", nextRunAt=due,
            cadence={"kind": "interval", "everyMinutes": 30})
    mission(env.log, "once", state="active", nextRunAt=due)  # no interval: stays put
    env.stub.status = 500
    failed = metric("mana_ai_runs_total", {"outcome": "failed"})
    s = env.make()
    async with running(s):
        await env.until(lambda: moved(env.dsn, "m1", due))
        await env.until(lambda: all(r["state"] == "failed" for r in ledger(env.dsn)))
    rows = {r["mission_id"]: r for r in ledger(env.dsn)}
    for row in rows.values():
        assert (row["state"], row["attempts"]) == ("failed", 3)
        assert "HTTP 500" in row["last_error"] and KEY not in row["last_error"]
    assert len(env.stub.requests) == 6  # 3 attempts each, one at a time
    assert iterations_written(env.dsn) == {}
    nxt = datetime.fromisoformat(snapshot(env.dsn, "m1")["nextRunAt"])
    assert timedelta(minutes=29) < nxt - datetime.now(UTC) <= timedelta(minutes=30)
    assert snapshot(env.dsn, "once")["nextRunAt"] == due
    assert metric("mana_ai_runs_total", {"outcome": "failed"}) == failed + 2
    runs = collect(env.dsn)["runs"]  # what `consumer status --json` shows
    assert runs["by_state"] == {"failed": 2} and runs["failed_last_hour"] == 2
    assert runs["oldest_running_seconds"] is None and runs["expired_leases"] == 0
    # The advanced occurrence is a new one, due in 30 minutes: nothing runs now.
    assert await s.run_pass() == []
    assert s.next_due == nxt


def runs_of(env: Env, mission_id: str) -> list[dict[str, Any]]:
    """The attributes of the mission's run spans, in the order they ended."""
    return [dict(sp.attributes or {}) for sp in env.exporter.get_finished_spans()
            if sp.name == "mission.run" and (sp.attributes or {}).get("mission.id") == mission_id]


def rows_of(dsn: str) -> list[tuple[str, int, str | None]]:
    return [(r["state"], r["attempts"], r["outcome"]) for r in ledger(dsn)]


def wake_retries(dsn: str) -> None:
    """End every waiting retry's backoff now (the tests give it a long one, so that the
    change they make lands while it waits, however slow the machine)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE mana_ai.dispatch_ledger SET wake_at = now() WHERE state = 'claimed'")


LONG_503 = {"status": 503, "headers": {"Retry-After": "600"}}


@pytest.mark.anyio
async def test_a_retry_whose_agent_was_paused_meanwhile_does_not_run(env: Env) -> None:
    due = at(-5)
    agent(env.log, "a1", name="Scout", state="active")
    mission(env.log, "m1", state="active", agentId="a1", nextRunAt=due, objective="o")
    env.stub.script = [LONG_503]
    released = metric("mana_ai_runs_total", {"outcome": "released"})
    s = env.make()
    async with running(s):
        await env.until(lambda: rows_of(env.dsn) == [("claimed", 1, None)])
        agent(env.log, "a1", state="paused")
        await env.until(lambda: True)  # projected
        wake_retries(env.dsn)
        await env.until(lambda: rows_of(env.dsn) == [("released", 1, "skipped-paused")])
    assert len(env.stub.requests) == 1  # the retry did not call the planner
    assert iterations_written(env.dsn) == {}
    runs = runs_of(env, "m1")
    assert [(r["run.attempt"], r["run.outcome"]) for r in runs] == [(1, "retry"), (2, "released")]
    assert (runs[1]["run.gate"], runs[1]["run.gate_reason"]) == ("skipped-paused", "agent paused")
    assert metric("mana_ai_runs_total", {"outcome": "released"}) == released + 1
    # The mission is due as it was, and decided afresh: skipped while the agent is paused.
    records = await s.run_pass()
    assert [(r.mission_id, r.decision.value, r.dispatched) for r in records] == [
        ("m1", "skipped-paused", False)]
    # Resumed, the same row is claimed again, its first attempt still counted, and runs once.
    agent(env.log, "a1", state="active")
    async with running(s):
        await env.until(lambda: rows_of(env.dsn) == [("done", 2, "written-back")])
    assert len(env.stub.requests) == 2 and iterations_written(env.dsn) == {"m1": 1}


@pytest.mark.anyio
async def test_a_retry_past_the_agents_budget_does_not_run(env: Env) -> None:
    # The first attempt's answer does not parse, but its 123 tokens were spent: the budget
    # of 100 is gone, so the retry must not spend more (upstream checks before every call).
    due = at(-5)
    agent(env.log, "a1", name="Scout", state="active", maxTokensPerDay=100)
    mission(env.log, "m1", state="active", agentId="a1", nextRunAt=due, objective="o")
    env.stub.script = [{"content": "I would rather not."}]
    s = env.make()
    async with running(s):
        await env.until(lambda: rows_of(env.dsn) == [("released", 1, "skipped-budget")])
    assert len(env.stub.requests) == 1 and iterations_written(env.dsn) == {}
    assert [(r["run.outcome"], r.get("run.gate")) for r in runs_of(env, "m1")] == [
        ("retry", None), ("released", "skipped-budget")]
    records = await s.run_pass()
    assert [(r.decision.value, r.dispatched) for r in records] == [("skipped-budget", False)]


@pytest.mark.anyio
async def test_a_mission_moved_while_its_retry_waited_runs_once_at_the_new_instant(
    env: Env,
) -> None:
    first, moved_to = at(-60), at(-30)
    mission(env.log, "m1", state="active", nextRunAt=first, objective="o")
    env.stub.script = [LONG_503]
    s = env.make()
    async with running(s):
        await env.until(lambda: rows_of(env.dsn) == [("claimed", 1, None)])
        # The user moves the mission: the scheduler claims the new instant and runs it.
        mission(env.log, "m1", nextRunAt=moved_to)
        await env.until(lambda: iterations_written(env.dsn) == {"m1": 1})
        # The first instant's retry finds the mission moved: released, not run.
        wake_retries(env.dsn)
        await env.until(lambda: sorted(rows_of(env.dsn)) == [
            ("done", 1, "written-back"), ("released", 1, "moved")])
    assert len(env.stub.requests) == 2 and iterations_written(env.dsn) == {"m1": 1}
    runs = runs_of(env, "m1")
    assert sorted(r["run.outcome"] for r in runs) == ["released", "retry", "written-back"]
    (gone,) = [r for r in runs if r["run.outcome"] == "released"]
    assert gone["run.gate"] == "moved" and gone["mission.due_at"] == first
    # A week on, the released row of the instant the mission left is forgotten; the
    # current occurrence's row stays.
    later = Scheduler(env.pool, tracer=env.tracer,
                      clock=lambda: datetime.now(UTC) + timedelta(days=8))
    assert await later.prune() == (1, 0)
    assert rows_of(env.dsn) == [("done", 1, "written-back")]


@pytest.mark.anyio
async def test_gates_that_cannot_be_checked_give_the_attempt_back_uncounted(env: Env) -> None:
    # The agents' table is away (renamed) when the retry starts: the database cannot say
    # whether the agent may run, so nothing runs and the attempt does not count.
    agent(env.log, "a1", name="Scout", state="active")
    mission(env.log, "m1", state="active", agentId="a1", nextRunAt=at(-5), objective="o")
    env.stub.script = [LONG_503]
    s = env.make(attempts=2)
    async with running(s):
        await env.until(lambda: rows_of(env.dsn) == [("claimed", 1, None)])
        env.log.execute("ALTER TABLE mana_ai.agent_snapshots RENAME TO agent_snapshots_away")
        try:
            wake_retries(env.dsn)
            await env.until(lambda: any("checking the gates failed" in (r["last_error"] or "")
                                        for r in ledger(env.dsn)))
        finally:
            env.log.execute("ALTER TABLE mana_ai.agent_snapshots_away RENAME TO agent_snapshots")
        # Back: the second and last attempt runs and writes.
        await env.until(lambda: rows_of(env.dsn) == [("done", 2, "written-back")])
    assert len(env.stub.requests) == 2 and iterations_written(env.dsn) == {"m1": 1}


@pytest.mark.anyio
async def test_a_mission_paused_during_its_retry_and_resumed_still_runs(env: Env) -> None:
    # Paused by its user while the retry waited, the occurrence is released, not failed: a
    # failed row would keep the mission from ever running at this nextRunAt again.
    due = at(-5)
    mission(env.log, "m1", state="active", nextRunAt=due, objective="o")
    env.stub.script = [LONG_503]
    s = env.make()
    async with running(s):
        await env.until(lambda: rows_of(env.dsn) == [("claimed", 1, None)])
        mission(env.log, "m1", state="paused")
        await env.until(lambda: True)
        wake_retries(env.dsn)
        await env.until(lambda: rows_of(env.dsn) == [("released", 1, "mission-inactive")])
        assert len(env.stub.requests) == 1
        mission(env.log, "m1", state="active")
        await env.until(lambda: rows_of(env.dsn) == [("done", 2, "written-back")])
    assert len(env.stub.requests) == 2 and iterations_written(env.dsn) == {"m1": 1}


@pytest.mark.anyio
async def test_a_run_stopped_by_shutdown_is_given_back_at_once(env: Env) -> None:
    mission(env.log, "m1", state="active", nextRunAt=at(-5))
    env.stub.delay = 10.0
    s = env.make()
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        await env.until(lambda: len(env.stub.requests) == 1)
        tg.cancel_scope.cancel()  # SIGTERM: the service's task group is cancelled
    (row,) = ledger(env.dsn)
    assert (row["state"], row["attempts"]) == ("claimed", 0)  # not counted, runnable now
    assert row["last_error"].startswith("stopped")
    env.stub.delay = 0.0
    await env.make().run_pass()
    assert iterations_written(env.dsn) == {"m1": 1}


@pytest.mark.anyio
async def test_a_database_error_recording_an_end_does_not_stop_the_worker(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumer import ledger as ledger_module

    real = ledger_module.mark_retry
    calls: list[int] = []

    async def broken(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return await real(*args, **kwargs)

    monkeypatch.setattr(ledger_module, "mark_retry", broken)
    mission(env.log, "m1", state="active", nextRunAt=at(-5))
    env.stub.script = [{"status": 503}]
    s = env.make(lease=0.6)
    async with running(s):
        # The failure could not be recorded; the lease runs out and attempt 2 runs.
        await env.until(lambda: iterations_written(env.dsn) == {"m1": 1})
    (row,) = ledger(env.dsn)
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert "expired" in row["last_error"]


@pytest.mark.anyio
async def test_a_run_whose_renewals_fail_is_not_taken_again_by_its_own_worker(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database does not answer the renewals (say it is away) for longer than the
    lease, while the planner call goes on: the lease runs out, but this worker does not
    take the occurrence again beside its own live attempt (a second planner call). The
    attempt ends, holds the fence still, and writes back once."""
    from consumer import ledger as ledger_module

    async def unreachable(*args: Any, **kwargs: Any) -> bool:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(ledger_module, "renew", unreachable)
    mission(env.log, "m1", state="active", nextRunAt=at(-5))
    env.stub.script = [{"delay": 1.5}]  # five times the lease, within the planner's 2 s
    s = env.make(lease=0.3)
    async with running(s):
        await env.until(lambda: iterations_written(env.dsn) == {"m1": 1})
        await anyio.sleep(0.5)  # a second attempt, were one running, would show by now
    assert len(env.stub.requests) == 1
    (row,) = ledger(env.dsn)
    assert (row["state"], row["attempts"]) == ("done", 1)
    assert iterations_written(env.dsn) == {"m1": 1}


class DoneThenLingers:
    """A dispatcher that commits the occurrence done itself (as the Runner does, in its
    write-back transaction), then still has work to finish: long enough for a renewal
    of the lease to run after the commit."""

    commits_done = True

    def __init__(self, pool: AsyncConnectionPool, linger: float) -> None:
        self.pool, self.linger = pool, linger
        self.finished: list[str] = []

    async def dispatch(self, job: Any) -> str | None:
        from consumer import ledger as ledger_module

        async with self.pool.connection() as conn, conn.transaction():
            assert await ledger_module.mark_done(conn, job, "ok")
        await anyio.sleep(self.linger)
        self.finished.append(job.mission_id)
        return "ok"


@pytest.mark.anyio
async def test_a_renewal_after_the_attempts_own_commit_does_not_call_the_run_lost(
    env: Env,
) -> None:
    """A renewal that finds the occurrence already done by this attempt stops renewing;
    it does not stop the run nor count it lost (before, it did both)."""
    dispatcher = DoneThenLingers(env.pool, linger=0.5)
    env.scheduler = Scheduler(
        env.pool, tracer=env.tracer, dispatcher=dispatcher, claims=True,
        worker_options={**FAST, "lease": 0.15}, prune_every=0)  # renewals every 50 ms
    lost = metric("mana_ai_runs_total", {"outcome": "lost"})
    ok = metric("mana_ai_runs_total", {"outcome": "ok"})
    mission(env.log, "m1", state="active", nextRunAt=at(-5))
    async with running(env.scheduler):
        await env.until(lambda: dispatcher.finished == ["m1"])
        await anyio.sleep(0.1)
    assert metric("mana_ai_runs_total", {"outcome": "lost"}) == lost
    assert metric("mana_ai_runs_total", {"outcome": "ok"}) == ok + 1
    (row,) = ledger(env.dsn)
    assert (row["state"], row["attempts"]) == ("done", 1)


# --------------------------------------------------------------------------- occurrences


@pytest.mark.anyio
async def test_the_same_instant_in_another_spelling_does_not_run_again(env: Env) -> None:
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    mission(env.log, "m1", state="active", nextRunAt=due.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    s = env.make()
    await env.until(lambda: True)
    await s.run_pass()
    assert iterations_written(env.dsn) == {"m1": 1}
    for spelling in (due.isoformat(), due.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     due.astimezone(datetime.now().astimezone().tzinfo).isoformat(),
                     due.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00")):
        mission(env.log, "m1", nextRunAt=spelling)
        await env.until(lambda sp=spelling: snapshot(env.dsn, "m1")["nextRunAt"] == sp)
        assert await s.run_pass() == []
    assert len(env.stub.requests) == 1
    assert [r["state"] for r in ledger(env.dsn)] == ["done"]


@pytest.mark.anyio
async def test_a_device_stamp_ahead_does_not_undo_the_interval_advance(env: Env) -> None:
    due = at(-5)
    # The device's clock runs 2 minutes ahead: its stamps on nextRunAt and iterations are
    # later than the runner's finish.
    ahead = at(120)
    write(env.log, "aiMissions", "m1",
          {"state": "active", "nextRunAt": due, "iterations": [],
           "cadence": {"kind": "interval", "everyMinutes": 60}},
          field_meta={"nextRunAt": ahead, "iterations": ahead, "state": ahead, "cadence": ahead})
    s = env.make()
    await env.until(lambda: True)
    await s.run_pass()
    await env.until(lambda: moved(env.dsn, "m1", due))
    record = snapshot(env.dsn, "m1")
    assert len(record["iterations"]) == 1
    (row,) = [r for r in ledger(env.dsn)]
    assert row["state"] == "done"
    with psycopg.connect(env.dsn) as conn:
        (meta,) = conn.execute(
            "SELECT field_meta FROM public.sync_changes WHERE client_id = 'mana-ai-runner'"
        ).fetchone() or (None,)
    assert meta["nextRunAt"] > ahead and meta["iterations"] > ahead
    assert await s.run_pass() == []  # the advanced occurrence is in an hour


# --------------------------------------------------------------------------- migration


def test_migration_converts_the_old_ledger(empty_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer import migrate as migrations

    real = migrations.discover
    monkeypatch.setattr(migrations, "discover", lambda: [m for m in real() if m.version <= 5])
    migrations.migrate(empty_db, with_sync_schema=True)
    old = [  # mission, raw nextRunAt, outcome, finished
        ("m1", "2026-01-01T10:00:00.000Z", "written-back", True),
        ("m1", "2026-01-01T11:00:00+01:00", "written-back", True),  # the same instant again
        ("m2", "2026-01-01T10:00:00.000Z", "error", True),
        ("m3", "2026-01-01T10:00:00.000Z", None, False),  # its process died mid-run
        ("m4", "2026-01-01T10:00:00.000Z", "recorded", True),  # decided without a planner
        ("m5", "soon", "ok", True),  # never parsed, never due
    ]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for i, (m, text, outcome, finished) in enumerate(old):
            conn.execute(
                """INSERT INTO mana_ai.dispatch_ledger (user_id, mission_id, next_run_at,
                       decision, decided_at, finished_at, outcome)
                   VALUES ('u1', %s, %s, 'ran', now() - make_interval(mins => 10 - %s),
                           CASE WHEN %s THEN now() END, %s)""",
                (m, text, i, finished, outcome))
    monkeypatch.setattr(migrations, "discover", real)
    assert "0006_run_lifecycle" in migrations.migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        rows = conn.execute(
            """SELECT mission_id, due_at, next_run_at, state, outcome, attempts,
                      wake_at IS NOT NULL FROM mana_ai.dispatch_ledger ORDER BY 1""").fetchall()
        assert conn.execute(
            "SELECT mana_ai.instant('2026-01-01 11:00:00.1234567+01'), mana_ai.instant('x'),"
            " mana_ai.instant('2026-02-30T10:00:00Z'), mana_ai.instant('2026-01-01T10:00')"
        ).fetchone() == (datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC), None, None,
                         datetime(2026, 1, 1, 10, tzinfo=UTC))
    ten = datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert rows == [
        ("m1", ten, "2026-01-01T10:00:00.000Z", "done", "written-back", 0, False),
        ("m2", ten, "2026-01-01T10:00:00.000Z", "claimed", None, 0, True),
        ("m3", ten, "2026-01-01T10:00:00.000Z", "claimed", None, 0, True),
    ]


@pytest.mark.anyio
async def test_a_claim_in_the_hour_a_zone_falls_back_is_won_whatever_the_databases_zone(
    db: str,
) -> None:
    # The scheduler matches the claims it won by their instant. Read back in a zone with
    # daylight saving, an instant of the fall-back hour never equalled the UTC one: the
    # claim was reported lost (claim.lost in its span) though its row was inserted and ran.
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{conn.info.dbname}\" SET timezone = 'Europe/Berlin'")
    instant = datetime(2025, 10, 26, 0, 30, tzinfo=UTC)  # 02:30 in Berlin, twice that night
    occ = Occurrence("u1", "m1", "2025-10-26T00:30:00Z", instant)
    async with open_pool(db) as pool, pool.connection() as conn:
        won = await claim_many(conn, [Claim(occ, "test", None)])
        assert won == {occ.key}
        # Our sessions read instants in UTC, whatever the database's zone.
        assert (await (await conn.execute("SHOW TimeZone")).fetchone()) == ("UTC",)


def test_the_sql_instant_agrees_with_the_parser(db: str) -> None:
    """The due queries' ledger clause (SQL) and the claim's key (Python) read nextRunAt
    alike, or an occurrence would be selected again after it ran."""
    offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda m: timezone(timedelta(minutes=m)))

    with psycopg.connect(db) as conn:
        @settings(max_examples=300)
        @given(
            at=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)),
            tz=st.one_of(st.none(), offsets),
            digits=st.integers(min_value=0, max_value=9),
            sep=st.sampled_from(["T", " "]),
            zulu=st.booleans(),
        )
        def check(at: datetime, tz: timezone | None, digits: int, sep: str, zulu: bool) -> None:
            text = at.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
            if digits:
                text += "." + f"{at.microsecond:06d}{at.microsecond % 1000:03d}"[:digits]
            if tz is not None:
                if zulu and tz.utcoffset(None) == timedelta(0):
                    text += "Z"
                else:
                    text += at.replace(tzinfo=tz).strftime("%z")[:3] + ":" + \
                        at.replace(tzinfo=tz).strftime("%z")[3:]
            row = conn.execute("SELECT mana_ai.instant(%s)", (text,)).fetchone()
            assert row is not None and row[0] == parse_instant(text), text

        check()


# --------------------------------------------------------------------------- leadership


@pytest.mark.anyio
async def test_a_deposed_leader_claims_nothing(env: Env) -> None:
    mission(env.log, "m1", state="active", nextRunAt=at(-5))
    await env.until(lambda: True)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT mana_ai.take_leadership('projection')").fetchone()
    assert row is not None
    s = env.make()
    s.epoch = row[0] - 1  # a newer leader took over
    with pytest.raises(Deposed):
        await s.run_pass()
    assert ledger(env.dsn) == []
    s.epoch = row[0]
    records = await s.run_pass()
    assert [(r.mission_id, r.dispatched) for r in records] == [("m1", True)]
    assert iterations_written(env.dsn) == {"m1": 1}


# --------------------------------------------------------------------------- write role


def test_migrate_sets_up_the_write_role_or_prints_the_statement(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        assert ensure_write_role(conn) is None  # the superuser did it all, at migrate
        row = conn.execute(
            "SELECT rolcanlogin, rolbypassrls, has_table_privilege(rolname, "
            "'public.sync_changes', 'INSERT'), has_table_privilege(rolname, "
            "'public.sync_changes', 'SELECT') FROM pg_roles WHERE rolname = %s",
            (WRITE_ROLE,)).fetchone()
        assert row == (False, False, True, False)
        # A consumer role that may not grant the write role to itself: one statement to run.
        conn.execute("DROP ROLE IF EXISTS runs_test_consumer")
        conn.execute("CREATE ROLE runs_test_consumer NOLOGIN")
        try:
            conn.execute("SET ROLE runs_test_consumer")
            assert ensure_write_role(conn) == (
                f'GRANT "{WRITE_ROLE}" TO "runs_test_consumer";')
            conn.execute("RESET ROLE")
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DROP ROLE runs_test_consumer")


# --------------------------------------------------------------------------- no planner


@pytest.mark.anyio
async def test_no_planner_decides_and_traces_once_claims_nothing_then_runs(env: Env) -> None:
    mission(env.log, "m1", state="active", nextRunAt=at(-30))
    await env.until(lambda: True)
    idle = env.make(planner=False)
    for _ in range(3):
        records = await idle.run_pass()
        assert [(r.mission_id, r.decision.value, r.dispatched) for r in records] == [
            ("m1", "ran", False)]
    assert [r.emitted for r in records] == [False]
    assert [d["decision"] for d in env.decisions("m1")] == ["ran"]  # traced once
    assert ledger(env.dsn) == [] and env.stub.requests == []
    # The planner is configured (a restart with MANA_LLM_URL): what is due runs.
    s = env.make()
    records = await s.run_pass()
    assert [(r.mission_id, r.dispatched) for r in records] == [("m1", True)]
    assert iterations_written(env.dsn) == {"m1": 1}
    assert [r["state"] for r in ledger(env.dsn)] == ["done"]


# --------------------------------------------------------------------------- processes


def consumer_env(dsn: str, stub: PlannerStub | None) -> dict[str, str]:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "SYNC_DATABASE_URL": dsn,
           "LOG_LEVEL": "INFO"}
    env.pop("MANA_LLM_URL", None)
    if stub is not None:
        env.update({"MANA_LLM_URL": stub.url, "MANA_LLM_API_KEY": KEY,
                    "MANA_LLM_TIMEOUT": "20"})
    return env


@contextmanager
def consumers(dsn: str, stub: PlannerStub | None, n: int, *extra: str,
              ) -> Iterator[list[subprocess.Popen[str]]]:
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--metrics-port", "0",
                 "--run-lease", "1.5", "--run-backoff", "0.2", "--run-poll", "0.1",
                 "--safety-poll", "1", *extra],
                env=consumer_env(dsn, stub), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def seed(dsn: str, n_missions: int, limits: dict[str, int], due: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, limit in limits.items():
            agent(conn, name, name=name, role="tester", state="active",
                  maxConcurrentMissions=limit)
        names = list(limits)
        for i in range(n_missions):
            mission(conn, f"m{i:03d}", state="active", agentId=names[i % len(names)],
                    nextRunAt=due, objective=f"objective {i}")


@pytest.mark.parametrize("processes", [2, 3])
def test_processes_share_the_runs_exactly_once_within_agent_limits(
    db: str, stub: PlannerStub, processes: int
) -> None:
    stub.delay = 0.15
    limits = {f"one-{i}": 1 for i in range(3)} | {f"two-{i}": 2 for i in range(3)}
    with consumers(db, stub, processes, "--max-runs", "4"):
        time.sleep(1.0)  # let them start, so every one can take runs
        seed(db, 60, limits, at(-1))
        wait_for(lambda: sum(iterations_written(db).values()) >= 60, 60, "60 iterations")
        time.sleep(0.5)  # room for a duplicate to show up
    assert iterations_written(db) == {f"m{i:03d}": 1 for i in range(60)}
    rows = ledger(db)
    assert len(rows) == 60 and {r["state"] for r in rows} == {"done"}
    owners = Counter(r["lease_owner"] for r in rows)
    assert len(owners) >= 2, owners  # standbys ran some too
    for name, limit in limits.items():
        calls = [(s, e) for s, e, a in stub.calls if a == name]
        assert len(calls) == 10
        assert max_overlap(calls) <= limit, (name, limit)


def test_a_killed_process_run_is_taken_over_and_a_committed_one_is_not_rerun(
    db: str, stub: PlannerStub
) -> None:
    # The first request hangs: its process is killed in flight. The second (another
    # process, after the lease ran out) answers at once.
    stub.script = [{"delay": 30.0}]
    with consumers(db, stub, 1) as (first,):
        time.sleep(1.0)
        seed(db, 1, {"solo": 1}, at(-1))
        wait_for(lambda: len(stub.requests) == 1, 20, "the first request")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = time.monotonic()
        with consumers(db, stub, 1):
            wait_for(lambda: sum(iterations_written(db).values()) == 1, 30, "the takeover")
        taken = time.monotonic() - killed
    (row,) = ledger(db)
    assert (row["state"], row["attempts"]) == ("done", 2), row
    assert "expired" in (row["last_error"] or "")
    assert taken >= 1.0  # not before the lease ran out
    assert len(stub.requests) == 2

    # Killed right after its write-back committed: the ledger says done in that same
    # commit, so the next process finds nothing to run.
    stub.script = []
    with consumers(db, stub, 1) as (third,):
        time.sleep(1.0)
        seed(db, 1, {"solo": 1}, at(-1))  # m000 again, a new occurrence
        wait_for(lambda: sum(iterations_written(db).values()) == 2, 30, "the second run")
        third.send_signal(signal.SIGKILL)
        third.wait(10)
        with consumers(db, stub, 1):
            time.sleep(3.0)  # two lease lengths
    assert iterations_written(db) == {"m000": 2}
    assert [r["state"] for r in ledger(db)] == ["done", "done"]
    assert len(stub.requests) == 3


def test_a_server_restart_with_runs_in_flight_runs_each_occurrence_once(
    db: str, stub: PlannerStub, pg_server: Any
) -> None:
    # Slow answers: every run is waiting on the planner when the server restarts, so each
    # loses its sessions mid-run (lease renewal, the write-back to come). A run may go on
    # and write back after the restart, or lose its lease and be tried again: either way
    # each occurrence ends with one iteration.
    stub.delay = 4.0
    n = 6
    with consumers(db, stub, 2) as procs:
        # Both processes past their start (each holds its listener session: the leader's,
        # and the standby's waiting for the lock). One still starting when the server goes
        # down stops there in one line (exit 2), as a start against an unreachable database
        # does: that failed this test once on a loaded machine.
        wait_for(lambda: sessions(db, LISTENER_APP) == 2, 30, "both consumers started")
        seed(db, n, {"a": 3, "b": 3}, at(-1))
        wait_for(lambda: len(stub.requests) >= n, 30, "every run waiting on the planner")
        in_flight = len(stub.requests) - len(stub.calls)  # asked, not yet answered
        pg_server.restart()  # returns once the server accepts connections again
        wait_for(lambda: sum(iterations_written(db).values()) >= n, 60,
                 "an iteration for every occurrence")
        time.sleep(3.0)  # two lease lengths: a second run or a stuck lease would show now
        for p in procs:
            if p.poll() is not None:  # seen once under load: its last lines say why
                tail = "".join(p.communicate()[0].splitlines(True)[-30:])
                pytest.fail(f"a consumer died with the server (exit {p.returncode}):\n{tail}")
    assert in_flight >= n // 2, stub.calls  # the restart did cut runs short
    assert iterations_written(db) == {f"m{i:03d}": 1 for i in range(n)}
    rows = ledger(db)
    assert len(rows) == n and {r["state"] for r in rows} == {"done"}, rows
    print(f"restart: {in_flight} of {n} runs in flight, {len(stub.requests)} planner "
          f"requests, attempts {sorted(r['attempts'] for r in rows)}")


def test_no_planner_says_so_once_and_claims_nothing(db: str, stub: PlannerStub) -> None:
    seed(db, 2, {"a": 2}, at(-1))
    lines: list[str] = []
    with consumers(db, None, 1) as (proc,):
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        # Until both decisions are logged (a fixed sleep was too short for the process to
        # even start on a loaded machine), then a few more passes that must decide nothing.
        wait_for(lambda: "".join(lines).count(": ran, ") >= 2, 30, "both decisions logged")
        time.sleep(1.5)
        proc.terminate()
        proc.wait(15)
        reader.join(15)
    output = "".join(lines)
    assert output.count("MANA_LLM_URL is not set") == 1, output
    assert output.count(": ran, ") == 2, output  # each due occurrence decided and logged once
    assert ledger(db) == []
    with consumers(db, stub, 1):
        wait_for(lambda: sum(iterations_written(db).values()) == 2, 30, "the runs")

