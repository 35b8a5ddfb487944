"""The scheduler against a real server, driven like production: log rows -> Projector ->
notify_changed -> passes; runs block on events the test controls; spans in memory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from consumer import ledger
from consumer import scheduler as scheduler_module
from consumer.db import aconnect
from consumer.decisions import Decision
from consumer.projection import Projector
from consumer.scheduler import Scheduler
from consumer.sql import load
from consumer.telemetry import in_memory_provider, tracer
from tests.helpers import at, metric, open_pool, wait_for_async
from tests.logtools import agent, mission, write

pytestmark = pytest.mark.anyio


class GatedDispatcher:
    """Records every dispatch; a run blocks until the test releases its mission."""

    def __init__(self, *, gated: bool = True, fail: bool = False) -> None:
        self.gated = gated
        self.fail = fail
        self.started: list[tuple[str, str, str]] = []  # (user, mission, occurrence)
        self.started_at: dict[str, float] = {}  # mission -> monotonic time of its dispatch
        self.agents: dict[str, dict | None] = {}
        self._gates: dict[str, anyio.Event] = {}

    def _gate(self, mission_id: str) -> anyio.Event:
        return self._gates.setdefault(mission_id, anyio.Event())

    async def dispatch(self, job: ledger.Job) -> str | None:
        mission, user_id, agent = job.mission, job.user_id, job.agent
        assert mission is not None
        self.started.append((user_id, mission["id"], job.next_run_at))
        self.started_at[mission["id"]] = time.monotonic()
        self.agents[mission["id"]] = agent
        if self.fail:
            raise RuntimeError("planner exploded")
        if self.gated:
            await self._gate(mission["id"]).wait()
        return "test"

    def release(self, mission_id: str) -> None:
        self._gate(mission_id).set()

    def missions(self) -> list[str]:
        return [m for _, m, _ in self.started]


class Env:
    def __init__(self, dsn: str, pool: AsyncConnectionPool, work: psycopg.AsyncConnection,
                 log: psycopg.Connection) -> None:
        self.dsn = dsn
        self.pool = pool
        self.work = work
        self.log = log  # mana-sync's side: writes log rows
        self.provider, self.exporter = in_memory_provider()
        self.tracer = tracer(self.provider)
        self.schedulers: list[Scheduler] = []
        self.projector = Projector(on_applied=self._notify)

    def _notify(self, applied: Any) -> None:
        for s in self.schedulers:
            s.notify_changed(applied)

    def scheduler(self, dispatcher: Any = None, **kwargs: Any) -> Scheduler:
        s = Scheduler(self.pool, tracer=self.tracer, dispatcher=dispatcher, **kwargs)
        self.schedulers.append(s)
        return s

    async def apply(self) -> None:
        await self.projector.catch_up(self.work)

    def decisions(self, mission_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for span in self.exporter.get_finished_spans():
            if span.name != "mission.decision":
                continue
            attrs = dict(span.attributes or {})
            if mission_id is None or attrs.get("mission.id") == mission_id:
                out.append(attrs)
        return out

    def decided(self, mission_id: str) -> list[str]:
        return [a.get("decision", "error") for a in self.decisions(mission_id)]


@pytest.fixture
async def env(db: str) -> AsyncIterator[Env]:
    async with open_pool(db, max_size=6) as pool:
        async with await aconnect(db, role="test") as work:
            with psycopg.connect(db, autocommit=True) as log:
                e = Env(db, pool, work, log)
                await e.projector.bootstrap(work)
                yield e


@asynccontextmanager
async def running(*schedulers: Scheduler) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for s in schedulers:
            tg.start_soon(s.run)
        yield
        tg.cancel_scope.cancel()


async def eventually(pred: Callable[[], object], within: float = 2.0) -> float:
    """Until pred() holds (2 s unless told: the scheduler reacts in well under that)."""
    return await wait_for_async(pred, within, "the scheduler's state")


def decisions_metric(decision: str) -> float:
    return metric("mana_ai_agent_decisions_total", {"decision": decision})


def ledger_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            """SELECT mission_id, next_run_at, decision, agent_id, outcome,
                      finished_at IS NOT NULL FROM mana_ai.dispatch_ledger ORDER BY 1, 2"""
        ).fetchall()


# --------------------------------------------------------------------------- wake-ups


async def test_paused_agent_is_skipped_then_runs_when_resumed(env: Env) -> None:
    dispatcher = GatedDispatcher()
    s = env.scheduler(dispatcher, max_sleep=60)
    async with running(s):
        agent(env.log, "a1", name="Ada", state="paused")
        mission(env.log, "m1", state="active", agentId="a1", nextRunAt=at(-60))
        await env.apply()
        await eventually(lambda: env.decided("m1") == ["skipped-paused"])
        # No busy loop, no span spam: an unrelated change wakes a pass that decides the
        # same, silently; then the scheduler sleeps (max_sleep), it does not spin.
        mission(env.log, "other", state="paused")
        ticks = metric("mana_ai_ticks_total")
        await env.apply()
        await anyio.sleep(0.3)
        after = metric("mana_ai_ticks_total")
        assert 1 <= after - ticks <= 2
        assert env.decided("m1") == ["skipped-paused"]
        assert s.sleep_seconds() > 30

        agent(env.log, "a1", state="active")
        resumed = time.monotonic()
        await env.apply()
        await eventually(lambda: dispatcher.missions() == ["m1"], within=1.0)
        assert dispatcher.started_at["m1"] - resumed < 1.0
        assert env.decided("m1") == ["skipped-paused", "ran"]
        assert dispatcher.agents["m1"] is not None and dispatcher.agents["m1"]["name"] == "Ada"
        dispatcher.release("m1")
        await eventually(lambda: bool(ledger_rows(env.dsn)) and ledger_rows(env.dsn)[0][5])
    assert ledger_rows(env.dsn)[0][:5] == ("m1", mission_next(env, "m1"), "ran", "a1", "test")


def mission_next(env: Env, mission_id: str) -> str:
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute(
            "SELECT record->>'nextRunAt' FROM mana_ai.mission_snapshots WHERE mission_id = %s",
            (mission_id,),
        ).fetchone()
    assert row is not None
    return row[0]


async def test_concurrency_limit_defers_until_a_run_ends(env: Env) -> None:
    dispatcher = GatedDispatcher()
    s = env.scheduler(dispatcher)
    agent(env.log, "a1", name="Solo", state="active", maxConcurrentMissions=1)
    for i, ago in enumerate((180, 120, 60), start=1):
        mission(env.log, f"m{i}", state="active", agentId="a1", nextRunAt=at(-ago))
    async with running(s):
        await env.apply()
        await eventually(lambda: len(env.decisions()) == 3 and len(dispatcher.started) == 1)
        assert dispatcher.missions() == ["m1"]  # oldest first
        assert env.decided("m2") == env.decided("m3") == ["skipped-concurrency"]
        assert s.in_flight.get("u1", "a1") == 1

        ended = time.monotonic()
        dispatcher.release("m1")
        # Prompt, not polled: the freed slot is used at once (bounds allow a loaded machine;
        # without the wake-up it would wait for max_sleep, 60 s).
        await eventually(lambda: dispatcher.missions() == ["m1", "m2"], within=5.0)
        assert dispatcher.started_at["m2"] - ended < 2.5
        assert env.decided("m2") == ["skipped-concurrency", "ran"]
        assert env.decided("m3") == ["skipped-concurrency"]  # unchanged: no second span

        dispatcher.release("m2")
        await eventually(lambda: dispatcher.missions() == ["m1", "m2", "m3"], within=5.0)
        dispatcher.release("m3")
        await eventually(lambda: all(r[5] for r in ledger_rows(env.dsn)))
    assert [r[0] for r in ledger_rows(env.dsn)] == ["m1", "m2", "m3"]


async def test_budget_spent_or_zero_is_skipped_and_usage_rolls(env: Env) -> None:
    for name, limit in (("spent", 100), ("zero", 0), ("rolled", 100), ("free", None)):
        fields: dict[str, Any] = {"name": name, "state": "active"}
        if limit is not None:
            fields["maxTokensPerDay"] = limit
        agent(env.log, name, **fields)
        mission(env.log, f"m-{name}", state="active", agentId=name, nextRunAt=at(-30))
    async with env.pool.connection() as conn:
        await ledger.record_usage(conn, "u1", "spent", 60)
        await ledger.record_usage(conn, "u1", "spent", 40)
        await ledger.record_usage(conn, "u1", "rolled", 10)
        await ledger.record_usage(conn, "u2", "spent", 1000)  # another user's agent
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO mana_ai.token_usage (user_id, agent_id, tokens, at)
                        VALUES ('u1', 'rolled', 500, now() - interval '25 hours')""")
    await env.apply()
    dispatcher = GatedDispatcher(gated=False)
    records = await env.scheduler(dispatcher).run_pass()
    got = {r.mission_id: (r.decision, r.reason) for r in records}
    assert got["m-spent"] == (Decision.SKIPPED_BUDGET, "used 100 of 100 tokens in 24h")
    assert got["m-zero"] == (Decision.SKIPPED_BUDGET, "used 0 of 0 tokens in 24h")
    assert got["m-rolled"][0] is Decision.RAN
    assert got["m-free"][0] is Decision.RAN
    assert sorted(dispatcher.missions()) == ["m-free", "m-rolled"]


async def test_the_budget_window_ends_at_the_databases_clock(env: Env) -> None:
    # Usage is stamped by the database; a process whose clock runs an hour behind must not
    # count what the database already rolled out of the 24 h (nor the workers, on other
    # hosts, disagree with the leader about it).
    agent(env.log, "a1", name="a1", state="active", maxTokensPerDay=100)
    mission(env.log, "m1", state="active", agentId="a1", nextRunAt=at(-7200))
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO mana_ai.token_usage (user_id, agent_id, tokens, at)
                        VALUES ('u1', 'a1', 500, now() - interval '24 hours 30 minutes')""")
    await env.apply()
    behind = env.scheduler(GatedDispatcher(gated=False),
                           clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    (record,) = await behind.run_pass()
    assert record.decision is Decision.RAN


async def test_missing_agent_is_decided_when_it_arrives(env: Env) -> None:
    dispatcher = GatedDispatcher(gated=False)
    s = env.scheduler(dispatcher)
    mission(env.log, "m1", state="active", agentId="late", nextRunAt=at(-5))
    async with running(s):
        await env.apply()
        await eventually(lambda: env.decided("m1") == ["skipped-agent-missing"])
        assert dispatcher.started == []
        agent(env.log, "late", name="Late", state="active")
        arrived = time.monotonic()
        await env.apply()
        await eventually(lambda: dispatcher.missions() == ["m1"], within=1.0)
        assert dispatcher.started_at["m1"] - arrived < 1.0
    assert env.decided("m1") == ["skipped-agent-missing", "ran"]


async def test_mission_due_in_two_seconds_is_decided_on_time(env: Env) -> None:
    dispatcher = GatedDispatcher(gated=False)
    s = env.scheduler(dispatcher, max_sleep=60)
    async with running(s):
        await anyio.sleep(0.05)  # the first pass finds nothing and sleeps max_sleep
        written = time.monotonic()
        mission(env.log, "soon", state="active", nextRunAt=at(2))
        await env.apply()
        await eventually(lambda: dispatcher.missions() == ["soon"], within=2.5)
        assert dispatcher.started_at["soon"] - written < 2.5
    (span,) = env.decisions("soon")
    assert span["decision"] == "ran"
    assert 0 <= span["mission.lateness_ms"] < 100  # slept until due, woke within 0.1 s


# --------------------------------------------------------------------------- at most once


async def test_an_occurrence_is_dispatched_once_across_replicas_and_restarts(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the race: each replica's first claim waits until both have selected the same due
    # set, so every occurrence is claimed twice and one claim of each must lose.
    real_claim = ledger.claim_many
    arrived: list[int] = []
    both = anyio.Event()
    won: list[int] = []

    async def racing_claim(conn: Any, claims: list[ledger.Claim], fence: Any = None) -> set:
        if len(arrived) < 2 and id(conn) not in arrived:
            arrived.append(id(conn))
            if len(arrived) == 2:
                both.set()
            await both.wait()
        result = await real_claim(conn, claims, fence)
        won.append(len(result))
        return result

    monkeypatch.setattr(ledger, "claim_many", racing_claim)
    first, second = GatedDispatcher(gated=False), GatedDispatcher(gated=False)
    a, b = env.scheduler(first), env.scheduler(second)
    ids = [f"m{i:02d}" for i in range(30)]
    async with running(a, b):
        await anyio.sleep(0.05)
        for i, mission_id in enumerate(ids):
            mission(env.log, mission_id, state="active", nextRunAt=at(-100 + i))
        await env.apply()  # wakes both at once: they race for every occurrence
        await eventually(lambda: len(first.started) + len(second.started) >= len(ids))
        await anyio.sleep(0.2)  # room for a duplicate to show up
        await eventually(lambda: all(r[5] for r in ledger_rows(env.dsn)))
    runs = first.started + second.started
    assert sorted(m for _, m, _ in runs) == ids  # each exactly once
    assert len(arrived) == 2 and sum(won) == len(ids)  # both claimed; the ledger split them
    assert len(ledger_rows(env.dsn)) == len(ids)
    # A lost claim's span says so; the others are the decisions that count.
    assert len([d for d in env.decisions() if not d.get("claim.lost")]) == len(ids)

    # A restart: a new scheduler (fresh memory) on the same database runs nothing again.
    env.schedulers.clear()
    third = GatedDispatcher(gated=False)
    restarted = env.scheduler(third)
    assert await restarted.run_pass() == []
    assert third.started == []

    # A moved nextRunAt is a new occurrence: it runs, once.
    moved = at(-1)
    mission(env.log, "m07", nextRunAt=moved)
    await env.apply()
    records = await restarted.run_pass()
    assert [(r.mission_id, r.occurrence, r.decision) for r in records] == [
        ("m07", moved, Decision.RAN)]
    assert third.started == [("u1", "m07", moved)]
    assert await restarted.run_pass() == []
    assert [r for r in ledger_rows(env.dsn) if r[0] == "m07"][1][1] == moved


async def test_lost_claim_does_not_leave_its_agent_deferred(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent(env.log, "a1", name="A", state="active", maxConcurrentMissions=1)
    mission(env.log, "m1", state="active", agentId="a1", nextRunAt=at(-20))
    mission(env.log, "m2", state="active", agentId="a1", nextRunAt=at(-10))
    await env.apply()
    real_claim = ledger.claim_many

    async def replica_was_faster(conn: Any, claims: list[ledger.Claim], fence: Any = None) -> set:
        # Another replica claims m1 between our selection and our claim.
        async with env.pool.connection() as other:
            await real_claim(other, [c for c in claims if c.occ.mission_id == "m1"])
        return await real_claim(conn, claims, fence)

    monkeypatch.setattr(ledger, "claim_many", replica_was_faster)
    dispatcher = GatedDispatcher(gated=False)
    s = env.scheduler(dispatcher)
    # m1 is lost; m2 was deferred only because of m1's counted slot: not emitted, re-decided.
    assert await s.run_pass() == []
    # m1's span says the claim was lost; m2's deferral is not emitted.
    assert [(d["mission.id"], d.get("claim.lost")) for d in env.decisions()] == [("m1", True)]
    assert s._pending  # run() would start the next pass at once
    monkeypatch.setattr(ledger, "claim_many", real_claim)
    records = await s.run_pass()
    assert [(r.mission_id, r.decision) for r in records] == [("m2", Decision.RAN)]
    # The workers run whatever is claimed, whoever claimed it: m1 ran after the first pass.
    assert dispatcher.missions() == ["m1", "m2"]


async def test_failed_run_frees_its_slot_and_is_recorded(env: Env) -> None:
    agent(env.log, "a1", name="A", state="active", maxConcurrentMissions=1)
    mission(env.log, "m1", state="active", agentId="a1", nextRunAt=at(-10))
    await env.apply()
    errors = metric("mana_ai_mission_errors_total")
    s = env.scheduler(GatedDispatcher(fail=True), worker_options={"attempts": 1})
    records = await s.run_pass()
    assert [r.decision for r in records] == [Decision.RAN]
    assert ledger_rows(env.dsn)[0][4:] == ("error", True)
    async with env.pool.connection() as conn:
        assert await ledger.live_counts(conn, {"u1"}) == {}  # the slot is free
    assert metric("mana_ai_mission_errors_total") == errors + 1


async def test_prune_keeps_the_current_occurrence(env: Env) -> None:
    first_at = at(-60)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    mission(env.log, "moved", state="active", nextRunAt=first_at)
    mission(env.log, "stuck", state="active", nextRunAt=at(-50))
    # Due spellings that upstream's parser (and the old prune) did not read: a date alone,
    # a lower-case 't'; and a mission paused after its run, its nextRunAt unchanged.
    mission(env.log, "stuck-date", state="active", nextRunAt=yesterday)
    mission(env.log, "stuck-t", state="active", nextRunAt=at(-40).replace("T", "t"))
    mission(env.log, "paused-after", state="active", nextRunAt=at(-30))
    await env.apply()
    s = env.scheduler(GatedDispatcher(gated=False))
    assert len(await s.run_pass()) == 5
    mission(env.log, "moved", nextRunAt=at(3600))  # the device advanced it
    mission(env.log, "paused-after", state="paused")
    await env.apply()
    async with env.pool.connection() as conn:
        await ledger.record_usage(conn, "u1", "a1", 5)
    later = Scheduler(env.pool, tracer=env.tracer,
                      clock=lambda: datetime.now(UTC) + timedelta(days=8))
    pruned = metric("mana_ai_ledger_pruned_rows_total", {"table": "dispatch_ledger"})
    assert await later.prune() == (1, 1)
    assert metric("mana_ai_ledger_pruned_rows_total", {"table": "dispatch_ledger"}) == pruned + 1
    # The others keep their rows: their nextRunAt never moved, so forgetting one would run
    # it again (once active again, for the paused one).
    assert [r[0] for r in ledger_rows(env.dsn)] == [
        "paused-after", "stuck", "stuck-date", "stuck-t"]
    assert await s.run_pass() == []
    mission(env.log, "paused-after", state="active")
    await env.apply()
    assert await s.run_pass() == []


async def test_the_leader_prunes_on_a_timer(env: Env) -> None:
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("""INSERT INTO mana_ai.token_usage (user_id, agent_id, tokens, at)
                        VALUES ('u1', 'a1', 5, now() - interval '26 hours'),
                               ('u1', 'a1', 7, now())""")

    def usage() -> list[int]:
        with psycopg.connect(env.dsn) as conn:
            return [r[0] for r in conn.execute("SELECT tokens FROM mana_ai.token_usage")]

    pruned = metric("mana_ai_ledger_pruned_rows_total", {"table": "token_usage"})

    def counted() -> float:
        return metric("mana_ai_ledger_pruned_rows_total", {"table": "token_usage"})

    # The count follows the prune's commit: wait for both, or the cancel may come between.
    async with running(env.scheduler(prune_every=0.1)):
        await eventually(lambda: usage() == [7] and counted() > pruned, within=5.0)
    assert counted() == pruned + 1


# --------------------------------------------------------------------------- selection


async def test_due_selection_reads_offsets_as_instants(env: Env) -> None:
    now = datetime.now(UTC)
    plus14 = timezone(timedelta(hours=14))
    minus10 = timezone(timedelta(hours=-10))
    cases = {
        # text sorts ~14 h in the future, instant is a minute ago: due
        "plus14-past": (now - timedelta(minutes=1)).astimezone(plus14).isoformat(),
        # text sorts 10 h in the past, instant is in an hour: not due
        "minus10-future": (now + timedelta(hours=1)).astimezone(minus10).isoformat(),
        "utc-6-digits": (now - timedelta(seconds=1)).isoformat(),  # '+00:00', 6 digits
        "z-no-fraction": (now - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "future-z": at(3600),
        "garbage": "soon-ish",
    }
    for mission_id, next_run_at in cases.items():
        mission(env.log, mission_id, state="active", nextRunAt=next_run_at)
    mission(env.log, "deleted", state="active", nextRunAt=at(-60), deletedAt=at(-1))
    mission(env.log, "paused", state="paused", nextRunAt=at(-60))
    mission(env.log, "no-next", state="active")
    await env.apply()
    s = env.scheduler(GatedDispatcher(gated=False), max_sleep=600)
    records = await s.run_pass()
    assert sorted(r.mission_id for r in records) == ["plus14-past", "utc-6-digits", "z-no-fraction"]
    # The next wake-up is the -10:00 mission's instant (in an hour), not its early text.
    assert s.next_due is not None
    assert abs((s.next_due - (now + timedelta(hours=1))).total_seconds()) < 0.01
    assert s.sleep_seconds() == 600


async def test_offset_missions_are_decided_on_time(env: Env) -> None:
    """Missions due in about a second, spelled with offsets whose text sorts 14 h after
    (+14:00) or 10 h before (-10:00) their instant: the scheduler sleeps until the first
    of them and decides each within a small bound of its instant, not on the next
    max_sleep wake-up."""
    dispatcher = GatedDispatcher(gated=False)
    s = env.scheduler(dispatcher, max_sleep=60)
    base = datetime.now(UTC) + timedelta(seconds=1.5)
    zones = {
        "plus14": timezone(timedelta(hours=14)),
        "plus0530": timezone(timedelta(hours=5, minutes=30)),
        "minus10": timezone(timedelta(hours=-10)),
        "utc": UTC,
    }
    due_at = {name: base + timedelta(milliseconds=150 * i) for i, name in enumerate(zones)}
    async with running(s):
        await anyio.sleep(0.05)  # the first pass finds nothing and sleeps max_sleep
        for name, zone in zones.items():
            spelled = due_at[name].astimezone(zone).isoformat(timespec="milliseconds")
            mission(env.log, name, state="active", nextRunAt=spelled)
        await env.apply()
        await eventually(lambda: len(dispatcher.started) == len(zones), within=5.0)
    for name in zones:
        (span,) = env.decisions(name)
        assert span["decision"] == "ran"
        # Goal p99 <= 50 ms; the bound is loose for a busy machine (the old text window
        # found a '+14:00' mission up to max_sleep = 60 s late).
        assert 0 <= span["mission.lateness_ms"] < 250, (name, span["mission.lateness_ms"])


async def test_deleted_missions_follow_upstreams_is_null_rule(env: Env) -> None:
    """record->>'deletedAt' IS NOT NULL takes a mission out: "", false, 0 and {} too;
    a JSON null or no deletedAt at all leaves it due."""
    cases: dict[str, Any] = {
        "empty-string": "", "false": False, "zero": 0, "object": {}, "stamp": at(-1),
    }
    for name, value in cases.items():
        mission(env.log, name, state="active", nextRunAt=at(-60), deletedAt=value)
    mission(env.log, "null", state="active", nextRunAt=at(-60), deletedAt=None)
    mission(env.log, "absent", state="active", nextRunAt=at(-60))
    await env.apply()
    s = env.scheduler(GatedDispatcher(gated=False), max_sleep=600)
    records = await s.run_pass()
    assert sorted(r.mission_id for r in records) == ["absent", "null"]
    with psycopg.connect(env.dsn) as conn:
        indexed = conn.execute("SELECT mission_id FROM mana_ai.mission_due ORDER BY 1").fetchall()
    assert indexed == [("absent",), ("null",)]


async def test_due_index_follows_every_change_of_a_mission(env: Env) -> None:
    """Paused, resumed, moved, deleted by deletedAt, by a delete row: the due index holds
    exactly the missions that can fall due, at their instant."""
    async def index() -> dict[str, datetime]:
        await env.apply()
        return dict(
            await (await env.work.execute("SELECT mission_id, due_at FROM mana_ai.mission_due"))
            .fetchall()
        )

    mission(env.log, "m", state="active", nextRunAt="2026-01-01T10:00:00+02:00")
    assert await index() == {"m": datetime(2026, 1, 1, 8, tzinfo=UTC)}
    mission(env.log, "m", state="paused")
    assert await index() == {}
    mission(env.log, "m", state="active", nextRunAt="2026-01-01T10:00:00.5-01:00")
    assert await index() == {"m": datetime(2026, 1, 1, 11, 0, 0, 500000, tzinfo=UTC)}
    mission(env.log, "m", title="only the title changes")
    assert await index() == {"m": datetime(2026, 1, 1, 11, 0, 0, 500000, tzinfo=UTC)}
    mission(env.log, "m", nextRunAt="not a date")
    assert await index() == {}
    mission(env.log, "m", nextRunAt="2026-01-01T00:00:00Z")
    mission(env.log, "other", state="active", nextRunAt="2026-01-02T00:00:00Z")
    assert await index() == {
        "m": datetime(2026, 1, 1, tzinfo=UTC), "other": datetime(2026, 1, 2, tzinfo=UTC)
    }
    mission(env.log, "m", deletedAt=False)
    assert await index() == {"other": datetime(2026, 1, 2, tzinfo=UTC)}
    write(env.log, "aiMissions", "other", None, op="delete")
    assert await index() == {}


def test_due_queries_use_the_due_index(db: str) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db) as conn:
        conn.execute("SET enable_seqscan = off")
        for name in ("snapshots/due_missions", "snapshots/due_next"):
            plan = "\n".join(
                r[0] for r in conn.execute(f"EXPLAIN {load(name)}", {"now": now}).fetchall()  # type: ignore[arg-type]
            )
            assert "idx_mission_due_at" in plan, plan


# --------------------------------------------------------------------------- telemetry


async def test_spans_attributes_parentage_and_metric(env: Env) -> None:
    agent(env.log, "a1", name="Ada", state="active")
    legacy_at, agent_at = at(-20), at(-10)
    mission(env.log, "legacy", state="active", nextRunAt=legacy_at)
    mission(env.log, "withagent", state="active", agentId="a1", nextRunAt=agent_at)
    await env.apply()
    before = {d.value: decisions_metric(d.value) for d in Decision}
    dispatcher = GatedDispatcher(gated=False)
    await env.scheduler(dispatcher).run_pass()
    after = {d.value: decisions_metric(d.value) for d in Decision}
    # Only the mission with an agent counts; the legacy one ran too but is not in the metric.
    assert {k: after[k] - before[k] for k in after} == {
        d.value: (1.0 if d is Decision.RAN else 0.0) for d in Decision}
    assert dispatcher.agents == {"legacy": None, "withagent": dispatcher.agents["withagent"]}

    spans = env.exporter.get_finished_spans()
    (pass_span,) = [s for s in spans if s.name == "scheduler.pass"]
    children = [s for s in spans if s.name == "mission.decision"]
    assert len(children) == 2
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == pass_span.context.span_id
        assert child.context.trace_id == pass_span.context.trace_id
    by_id = {dict(c.attributes or {})["mission.id"]: dict(c.attributes or {}) for c in children}
    legacy = by_id["legacy"]
    assert "agent.id" not in legacy
    assert legacy["agent.name"] == "Mana"
    assert legacy["user.id"] == "u1" and legacy["decision"] == "ran"
    assert legacy["mission.due_at"] == legacy_at
    assert legacy["reason"] == "legacy mission: default identity"
    assert legacy["mission.lateness_ms"] >= 20_000
    with_agent = by_id["withagent"]
    assert with_agent["agent.id"] == "a1" and with_agent["agent.name"] == "Ada"
    assert with_agent["mission.due_at"] == agent_at
    assert with_agent["decision"] == "ran"
    assert pass_span.attributes is not None and pass_span.attributes["scheduler.due"] == 2


async def test_a_decision_that_fails_is_an_error_span(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    mission(env.log, "bad", state="active", nextRunAt=at(-5))
    mission(env.log, "good", state="active", nextRunAt=at(-4))
    await env.apply()
    real = scheduler_module.decide

    def flaky(mission: dict[str, Any], *args: Any) -> Any:
        if mission["id"] == "bad":
            raise ValueError("gate exploded")
        return real(mission, *args)

    monkeypatch.setattr(scheduler_module, "decide", flaky)
    dispatcher = GatedDispatcher(gated=False)
    records = await env.scheduler(dispatcher).run_pass()
    assert [r.mission_id for r in records] == ["good"]  # the others are still decided
    assert dispatcher.missions() == ["good"]
    spans = env.exporter.get_finished_spans()
    (pass_span,) = [sp for sp in spans if sp.name == "scheduler.pass"]
    (span,) = [sp for sp in spans if sp.name == "mission.decision"
               and (sp.attributes or {}).get("mission.id") == "bad"]
    assert span.status.status_code.name == "ERROR"
    assert span.events and span.events[0].name == "exception"
    assert span.parent is not None and span.parent.span_id == pass_span.context.span_id


# ------------------------------------------------------------------ upstream's agent reading


async def test_agents_are_found_and_read_as_upstream_reads_them(env: Env) -> None:
    """By the record's `id` (a data field `id` wins over the key), only with `deletedAt`
    absent or null, `name` missing -> 'Unnamed', `maxConcurrentMissions` missing -> 1."""
    dispatcher = GatedDispatcher()
    s = env.scheduler(dispatcher)
    agent(env.log, "key-1", id="real-1", state="active")  # no name, no limit
    agent(env.log, "hidden", name="Hidden", deletedAt="")  # falsy: kept, but not loaded
    for m, aid in [("m1", "real-1"), ("m2", "real-1"), ("m3", "key-1"), ("m4", "hidden")]:
        mission(env.log, m, state="active", agentId=aid, nextRunAt=at(-5))
    async with running(s):
        await env.apply()
        await eventually(
            lambda: all(env.decided(m) for m in ("m1", "m2", "m3", "m4"))
            and len(dispatcher.started) == 1
        )
        await anyio.sleep(0.05)
        assert len(dispatcher.started) == 1  # one at a time: the default limit
        ran = dispatcher.missions()[0]
        other = "m2" if ran == "m1" else "m1"
        assert env.decided(ran) == ["ran"]
        assert env.decided(other) == ["skipped-concurrency"]
        assert env.decided("m3") == ["skipped-agent-missing"]
        assert env.decided("m4") == ["skipped-agent-missing"]
        assert env.decisions(ran)[0]["agent.name"] == "Unnamed"
        assert dispatcher.agents[ran] == {"id": "real-1", "state": "active"}
        dispatcher.release(ran)
        await eventually(lambda: env.decided(other) == ["skipped-concurrency", "ran"])
        dispatcher.release(other)
