"""The scheduler: sleeps until the next nextRunAt, decides due missions, dispatches runs.

Loop. `run()` does a pass, then sleeps until the earliest future nextRunAt in the projection
(capped by `max_sleep`), woken early by the projection (`notify_changed`) or by a run that
finishes. A pass never reads the log: it selects candidates from mana_ai.mission_snapshots
through the seed's index idx_mission_snapshots_due, keeps those whose parsed nextRunAt has
come (`decisions.is_due`), and decides each with `decisions.decide` (DESIGN §5).

Due selection. nextRunAt is compared as TEXT in SQL (that is what the seed's index serves)
and as a parsed instant in Python. For UTC spellings ('Z', '+00:00', no offset) text order is
instant order; a negative offset makes the text sort *earlier* than the instant (found early,
filtered here); a positive offset makes it sort *later*, by at most 14 h, so strings with a
'+' are selected up to now + 14 h (see due_missions.sql). Spellings that do not sort like
extended ISO text (lower-case 't', basic format '20260101T...') are not found by the index,
as upstream's text comparison did not find them either.

At most once per occurrence. The `ran` decisions of a pass are claimed in the dispatch
ledger, in one statement and one commit, before any of them starts (consumer/ledger.py).
A lost claim means another scheduler (a replica, or this one before a restart) dispatched
it: nothing is run and nothing is emitted, and later passes do not see the occurrence (the
due query skips ledgered occurrences).

Positive offsets. A nextRunAt like '...T10:00+02:00' sorts after its instant, so the text
bound `<= now` misses it. The 14 h text window that finds them costs ~20-40 ms with 1M
missions, so it is scanned only every WIDE_SCAN_EVERY; the '+' missions it finds are kept
in memory (by key) and re-read by key each pass, and so are the missions the projection
reports changed (notify_changed), so a new or moved '+' mission is seen at once. Every other
pass reads only `nextRunAt <= now` through the seed index.

Spans and metrics. One "scheduler.pass" span per pass, one "mission.decision" child per
decision. A skipped occurrence stays due and is decided again on every pass; to keep traces
readable, its span (and its mana_ai_agent_decisions_total bump) is emitted only when its
decision changes, or again once `max_sleep` has passed since it was last emitted (a
heartbeat for a mission that stays stuck). The memory of last decisions holds only
occurrences still due, so it is bounded by the due set. mana_ai_decision_lateness_seconds
is observed once per occurrence, at its first decision in this process.

In flight. Runs execute in the scheduler's task group; the scheduler counts them per
(user, agent) from the decision until the run ends or fails (a slot is taken while deciding,
so the next mission of the same pass sees it). A finishing run wakes the loop when its agent
has a mission deferred by `skipped-concurrency`, so that one is decided at once. The count is
per process: the ledger, not the count, is what keeps replicas from running an occurrence
twice. A run in flight when the process dies stays claimed (finished_at NULL), not retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec
import psycopg
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from psycopg_pool import AsyncConnectionPool

from . import ledger, metrics, shutdown
from .apply import Applied
from .decisions import Decision, Verdict, decide, is_due, is_legacy, parse_instant
from .errors import Deposed
from .ledger import Occurrence
from .sql import load
from .telemetry import tracer as default_tracer

log = logging.getLogger(__name__)

LEGACY_AGENT_NAME = "Mana"  # display name of the default identity (DESIGN §5)
MAX_POSITIVE_OFFSET = timedelta(hours=14)  # the largest UTC offset in use (+14:00, Kiribati)
TEXT_SLACK = timedelta(minutes=1)  # keeps the text bound clear of fractional-digit spellings
BUDGET_WINDOW = timedelta(hours=24)
NEXT_LIMIT = 32  # nextRunAt strings read past the bound to find the next wake-up
WAKE_EPSILON = 0.005  # seconds added to a timed sleep: a timer may fire a hair early
MIN_SLEEP = 0.001
FINISH_TIMEOUT = 5.0  # seconds a finishing run may spend recording its outcome
MAX_BACKOFF = 30.0
WIDE_SCAN_EVERY = 60.0  # seconds between scans of the 14 h window for '+' offsets

_decode = msgspec.json.Decoder(dict[str, Any])


def _utcnow() -> datetime:
    return datetime.now(UTC)


def utc_text(at: datetime) -> str:
    """An instant as the ISO text mana's clients write (UTC, 'Z'), 6 fractional digits."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Dispatcher(Protocol):
    """Runs one claimed occurrence to its end.

    Called inside the scheduler's task group after the ledger claim; return when the run has
    ended (the scheduler frees the agent's slot then), raise when it failed. The return value
    is the outcome written to the ledger (None means "ok").
    """

    async def dispatch(
        self,
        mission: dict[str, Any],
        user_id: str,
        agent: dict[str, Any] | None,
        occurrence: str,
    ) -> str | None: ...


class LedgerDispatcher:
    """Default until the runner exists: runs nothing; the ledger records the occurrence."""

    async def dispatch(
        self,
        mission: dict[str, Any],
        user_id: str,
        agent: dict[str, Any] | None,
        occurrence: str,
    ) -> str | None:
        return ledger.OUTCOME_RECORDED


class InFlight:
    """Runs dispatched and not yet ended, per (user, agent); legacy runs count under None."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str | None], int] = {}

    def get(self, user_id: str, agent_id: str | None) -> int:
        return self._counts.get((user_id, agent_id), 0)

    def acquire(self, user_id: str, agent_id: str | None) -> None:
        key = (user_id, agent_id)
        self._counts[key] = self._counts.get(key, 0) + 1
        metrics.RUNS_IN_FLIGHT.inc()

    def release(self, user_id: str, agent_id: str | None) -> None:
        key = (user_id, agent_id)
        left = self._counts.get(key, 0) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)
        metrics.RUNS_IN_FLIGHT.dec()

    def total(self) -> int:
        return sum(self._counts.values())


class DecisionRecord(msgspec.Struct, frozen=True):
    """One decision of a pass (lost ledger claims are not listed: another scheduler ran it)."""

    user_id: str
    mission_id: str
    occurrence: str  # the raw nextRunAt string
    due_at: datetime
    agent_id: str | None
    agent_name: str | None
    decision: Decision
    reason: str
    lateness_s: float
    emitted: bool  # a span was emitted (new or changed decision, or the max_sleep heartbeat)
    dispatched: bool


class _Due(msgspec.Struct):
    occ: Occurrence
    at: datetime
    mission: dict[str, Any]


class _Decided(msgspec.Struct):
    d: _Due
    verdict: Verdict
    agent: dict[str, Any] | None
    agent_id: str | None
    agent_name: str | None
    lateness: float  # seconds from nextRunAt to the decision


class Scheduler:
    """Due missions -> decisions -> runs. Wiring, in the service's task group:

    scheduler = Scheduler(pool, tracer=telemetry.tracer(), max_sleep=settings.max_sleep,
                          dispatcher=runner)  # runner: a Dispatcher; default records only
    projector.on_applied = scheduler.notify_changed
    tg.start_soon(scheduler.run)
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        tracer: trace.Tracer | None = None,
        max_sleep: float = 60.0,
        dispatcher: Dispatcher | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if max_sleep <= 0:
            raise ValueError("max_sleep must be positive")
        self.pool = pool
        self.tracer = tracer if tracer is not None else default_tracer()
        self.max_sleep = max_sleep
        self.dispatcher: Dispatcher = dispatcher if dispatcher is not None else LedgerDispatcher()
        self.clock = clock
        self.in_flight = InFlight()
        self.next_due: datetime | None = None  # earliest future nextRunAt seen by the last pass
        self._wide_at: float | None = None  # monotonic time of the last 14 h window scan
        self._positive: set[tuple[str, str]] = set()  # missions with a '+hh:mm' nextRunAt
        self._changed: set[tuple[str, str]] = set()  # missions the projection changed
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake: anyio.Event | None = None  # created inside the loop (needs a running loop)
        self._pending = False  # a wake arrived since the current pass started
        self._lock: anyio.Lock | None = None
        # occurrence -> (last decision emitted, monotonic time of that emission)
        self._last: dict[Occurrence, tuple[Decision, float]] = {}
        # (user, agent) with a mission deferred by skipped-concurrency in the current pass
        self._deferred: set[tuple[str, str | None]] = set()
        # Leadership gate, set by the service: decide and claim only while it returns True
        # (checked before a pass and again right before its claim). `epoch` is the leader
        # epoch of this process's term, for claims that are fenced in SQL.
        self.leading: Callable[[], bool] = lambda: True
        self.epoch: int | None = None
        self.on_pass: Callable[[], None] = lambda: None  # a pass completed (health heartbeat)

    # ------------------------------------------------------------------ wake-ups

    def notify_changed(self, applied: Applied | None = None) -> None:
        """Projection hook (Projector.on_applied): missions or agents changed, look again.

        Synchronous and cheap; call it on the event loop's thread. Any change wakes the loop:
        a pass costs one indexed query, and wakes during a pass fold into one more pass.
        """
        if applied is not None:
            self._changed |= applied.missions
        self._poke()

    def _poke(self) -> None:
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Pass, sleep until the next nextRunAt (at most max_sleep) or a wake, forever."""
        failures = 0
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    self._wake = anyio.Event()
                    self._pending = False
                    try:
                        with shutdown.finishing():  # see consumer/shutdown.py
                            await self.run_pass()
                    except Deposed:
                        log.info("scheduler: no longer the leader; deciding stops")
                        return
                    except Exception:
                        failures += 1
                        delay = min(MAX_BACKOFF, self.max_sleep, 0.25 * 2**failures)
                        log.exception("scheduler pass failed; retrying in %.2f s", delay)
                        await anyio.sleep(delay)  # a wake does not cut the backoff short
                        continue
                    failures = 0
                    self.on_pass()
                    if self._pending:
                        continue  # something changed during the pass
                    with anyio.move_on_after(self.sleep_seconds()):
                        await self._wake.wait()
            finally:
                self._tg = None

    def sleep_seconds(self) -> float:
        """Until the earliest known future nextRunAt, capped by max_sleep; never 0."""
        if self.next_due is None:
            return self.max_sleep
        delta = (self.next_due - self.clock()).total_seconds() + WAKE_EPSILON
        return min(self.max_sleep, max(delta, MIN_SLEEP))

    # ------------------------------------------------------------------ one pass

    async def run_pass(self) -> list[DecisionRecord]:
        """One pass over the due missions.

        Inside run(), runs start in run()'s task group and this returns at once. Called on its
        own (tests, tools), it waits for the runs it started before returning.
        """
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            started = time.perf_counter()
            try:
                with self.tracer.start_as_current_span("scheduler.pass") as span:
                    if self._tg is not None:
                        return await self._pass(span, self._tg)
                    async with anyio.create_task_group() as tg:
                        records = await self._pass(span, tg)
                    return records
            finally:
                metrics.TICKS.inc()
                metrics.TICK_DURATION.observe(time.perf_counter() - started)

    async def _pass(self, span: trace.Span, tg: anyio.abc.TaskGroup) -> list[DecisionRecord]:
        now = self.clock()
        self._deferred = set()
        if not self.leading():
            raise Deposed("not the leader")
        async with self.pool.connection() as conn:
            async with conn.transaction():
                due, candidates = await self._select(conn, now)
                agents = await self._agents(conn, {d.occ.user_id for d in due})
                pairs = {
                    (d.occ.user_id, aid)
                    for d in due
                    if (aid := _agent_id(d.mission)) is not None and (d.occ.user_id, aid) in agents
                }
                usage = await ledger.usage_since(conn, pairs, now - BUDGET_WINDOW)
            decided = [x for d in due if (x := self._decide(d, agents, usage)) is not None]
            ran = [x for x in decided if x.verdict.decision is Decision.RAN]
            try:
                if not self.leading():
                    raise Deposed("leadership lost during the pass")
                won = await ledger.claim_many(
                    conn,
                    [
                        ledger.Claim(
                            x.d.occ, x.verdict.decision.value, x.verdict.reason, x.agent_id
                        )
                        for x in ran
                    ],
                )
            except BaseException:
                for x in ran:
                    self.in_flight.release(x.d.occ.user_id, x.agent_id)
                raise
            # From here to the runs' start nothing awaits: a cancellation cannot leave a
            # claimed run unstarted with its slot taken.
            records = self._settle(tg, decided, ran, won)

        # Forget occurrences no longer due (moved, dispatched, paused mission, deleted).
        still_due = {d.occ for d in due}
        self._last = {k: v for k, v in self._last.items() if k in still_due and k not in won}

        span.set_attribute("scheduler.candidates", candidates)
        span.set_attribute("scheduler.due", len(due))
        span.set_attribute("scheduler.emitted", sum(r.emitted for r in records))
        span.set_attribute("scheduler.dispatched", sum(r.dispatched for r in records))
        span.set_attribute("scheduler.in_flight", self.in_flight.total())
        if self.next_due is not None:
            span.set_attribute("scheduler.next_due", utc_text(self.next_due))
        return records

    def _settle(
        self,
        tg: anyio.abc.TaskGroup,
        decided: list[_Decided],
        ran: list[_Decided],
        won: set[Occurrence],
    ) -> list[DecisionRecord]:
        """After the claim: emit the decisions and start the runs that are ours."""
        # A lost claim: another scheduler dispatched that occurrence. Its slot was counted
        # while deciding, so a later mission of the same agent may have been deferred for
        # nothing: those decisions are dropped unemitted and a new pass decides them again.
        lost_agents: set[tuple[str, str | None]] = set()
        for x in ran:
            if x.d.occ not in won:
                self.in_flight.release(x.d.occ.user_id, x.agent_id)
                lost_agents.add((x.d.occ.user_id, x.agent_id))
                self._last.pop(x.d.occ, None)
        if lost_agents:
            self._poke()
        records: list[DecisionRecord] = []
        for x in decided:
            decision = x.verdict.decision
            if decision is Decision.RAN and x.d.occ not in won:
                continue  # silently: not ours to run, and never again decided
            if (
                decision is Decision.SKIPPED_CONCURRENCY
                and (x.d.occ.user_id, x.agent_id) in lost_agents
            ):
                continue
            records.append(self._emit(tg, x))
        return records

    async def _select(self, conn: psycopg.AsyncConnection, now: datetime) -> tuple[list[_Due], int]:
        """Due occurrences, oldest first; also sets next_due. Returns (due, candidates read)."""
        exact = utc_text(now + TEXT_SLACK)
        mono = time.monotonic()
        wide_scan = self._wide_at is None or mono - self._wide_at >= WIDE_SCAN_EVERY
        wide = utc_text(now + MAX_POSITIVE_OFFSET + TEXT_SLACK) if wide_scan else exact
        cur = await conn.execute(load("due_missions"), {"exact": exact, "wide": wide})
        rows = await cur.fetchall()
        if wide_scan:
            self._wide_at = mono
            self._positive = {(r[0], r[1]) for r in rows if "+" in r[2]}
        changed, self._changed = self._changed, set()
        keys = (self._positive | changed) - {(r[0], r[1]) for r in rows}
        if keys:
            users, missions = zip(*sorted(keys), strict=True)
            try:
                cur = await conn.execute(
                    load("due_by_keys"), {"users": list(users), "missions": list(missions)}
                )
                by_key = await cur.fetchall()
            except BaseException:
                self._changed |= changed  # not looked at: the next pass does
                raise
            # Remember the '+' ones among them; the rest the text-bound query will find.
            self._positive = (self._positive - keys) | {(r[0], r[1]) for r in by_key if "+" in r[2]}
            rows += by_key
        due: list[_Due] = []
        upcoming: list[datetime] = []
        for user_id, mission_id, next_run_at, body in rows:
            at = parse_instant(next_run_at)
            if at is None:
                continue  # unparseable: never due (is_due agrees)
            if at > now:
                upcoming.append(at)
                continue
            mission = _decode.decode(body)
            if is_due(mission, now):
                due.append(_Due(Occurrence(user_id, mission_id, next_run_at), at, mission))
        # Past the text bound, text order is close to instant order; a few rows suffice,
        # and max_sleep bounds any error from unusual offsets.
        cur = await conn.execute(load("due_next"), {"after": exact, "limit": NEXT_LIMIT})
        for (text,) in await cur.fetchall():
            at = parse_instant(text)
            if at is not None and at > now:
                upcoming.append(at)
        self.next_due = min(upcoming, default=None)
        due.sort(key=lambda d: (d.at, d.occ.user_id, d.occ.mission_id))
        return due, len(rows)

    async def _agents(
        self, conn: psycopg.AsyncConnection, users: set[str]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """All projected agents of the pass's users: one query per pass."""
        if not users:
            return {}
        cur = await conn.execute(load("agents_load"), {"users": sorted(users)})
        return {(u, a): _decode.decode(body) for u, a, body in await cur.fetchall()}

    def _decide(
        self,
        d: _Due,
        agents: dict[tuple[str, str], dict[str, Any]],
        usage: dict[tuple[str, str], int],
    ) -> _Decided | None:
        """Decide one due occurrence (no I/O). A `ran` takes its agent's slot at once, so the
        next decision of this pass sees it; the pass frees it again if the claim is lost."""
        occ, mission = d.occ, d.mission
        agent_id = _agent_id(mission)
        agent = agents.get((occ.user_id, agent_id)) if agent_id is not None else None
        if agent_id is None:
            agent_name: str | None = LEGACY_AGENT_NAME
        else:
            name = agent.get("name") if agent is not None else None
            agent_name = name if isinstance(name, str) else None
        try:
            verdict = decide(
                mission,
                agent,
                self.in_flight.get(occ.user_id, agent_id),
                usage.get((occ.user_id, agent_id), 0) if agent_id is not None else 0,
            )
        except Exception as exc:
            log.exception("deciding mission %s of %s failed", occ.mission_id, occ.user_id)
            attrs = _attributes(occ, agent_id, agent_name)
            with self.tracer.start_as_current_span("mission.decision", attributes=attrs) as s:
                s.record_exception(exc)
                s.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            return None
        if verdict.decision is Decision.RAN:
            self.in_flight.acquire(occ.user_id, agent_id)
        elif verdict.decision is Decision.SKIPPED_CONCURRENCY:
            self._deferred.add((occ.user_id, agent_id))  # a run of this agent ending wakes us
        lateness = max(0.0, (self.clock() - d.at).total_seconds())
        return _Decided(d, verdict, agent, agent_id, agent_name, lateness)

    def _emit(self, tg: anyio.abc.TaskGroup, x: _Decided) -> DecisionRecord:
        """Span and metric for a decision that is new or changed; start the run of a `ran`."""
        occ, decision = x.d.occ, x.verdict.decision
        ran = decision is Decision.RAN
        mono = time.monotonic()
        prev = self._last.get(occ)
        if prev is None:
            metrics.DECISION_LATENESS.observe(x.lateness)
        emit = ran or prev is None or prev[0] is not decision or mono - prev[1] >= self.max_sleep
        if emit:
            self._last[occ] = (decision, mono)
            if x.agent_id is not None:
                metrics.AGENT_DECISIONS.labels(decision=decision.value).inc()
            attrs = _attributes(occ, x.agent_id, x.agent_name)
            attrs.update(
                {
                    "decision": decision.value,
                    "reason": x.verdict.reason,
                    "mission.lateness_ms": round(x.lateness * 1000.0, 3),
                }
            )
            log.info(
                "mission %s of %s (agent %s): %s, %s, %.0f ms late",
                occ.mission_id,
                occ.user_id,
                x.agent_name or x.agent_id,
                decision.value,
                x.verdict.reason,
                x.lateness * 1000.0,
            )
            # The run starts inside the decision span, so the runner's spans are its children.
            with self.tracer.start_as_current_span("mission.decision", attributes=attrs):
                if ran:
                    tg.start_soon(self._run_one, x.d, x.agent, x.agent_id)
        return DecisionRecord(
            user_id=occ.user_id,
            mission_id=occ.mission_id,
            occurrence=occ.next_run_at,
            due_at=x.d.at,
            agent_id=x.agent_id,
            agent_name=x.agent_name,
            decision=decision,
            reason=x.verdict.reason,
            lateness_s=x.lateness,
            emitted=emit,
            dispatched=ran,
        )

    # ------------------------------------------------------------------ runs

    async def _run_one(self, d: _Due, agent: dict[str, Any] | None, agent_id: str | None) -> None:
        """One claimed run; its slot was taken when it was decided and is freed here."""
        occ = d.occ
        outcome = ledger.OUTCOME_ERROR
        try:
            result = await self.dispatcher.dispatch(d.mission, occ.user_id, agent, occ.next_run_at)
            outcome = result or ledger.OUTCOME_OK
        except anyio.get_cancelled_exc_class():
            outcome = ledger.OUTCOME_CANCELLED
            raise
        except Exception:
            metrics.MISSION_ERRORS.inc()
            log.exception("run of mission %s (%s) failed", occ.mission_id, occ.next_run_at)
        finally:
            self.in_flight.release(occ.user_id, agent_id)
            if (occ.user_id, agent_id) in self._deferred:
                self._poke()  # a freed slot: the deferred mission may run now
            with anyio.move_on_after(FINISH_TIMEOUT, shield=True):
                try:
                    async with self.pool.connection() as conn:
                        await ledger.finish(conn, occ, outcome)
                except Exception:
                    log.warning("could not record the outcome of %s", occ, exc_info=True)

    # ------------------------------------------------------------------ housekeeping

    async def prune(self, keep: timedelta = timedelta(days=7)) -> tuple[int, int]:
        """Drop old ledger rows of missions that moved on, and usage past the budget window.

        Returns (ledger rows, usage rows) deleted. Cheap enough to call hourly.
        """
        now = self.clock()
        async with self.pool.connection() as conn:
            occurrences = await ledger.prune(conn, now - keep)
            usage = await ledger.prune_usage(conn, now - BUDGET_WINDOW - timedelta(hours=1))
        return occurrences, usage


def _attributes(occ: Occurrence, agent_id: str | None, agent_name: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "mission.id": occ.mission_id,
        "user.id": occ.user_id,
        "mission.due_at": occ.next_run_at,
    }
    if agent_id is not None:
        attrs["agent.id"] = agent_id
    if agent_name is not None:
        attrs["agent.name"] = agent_name
    return attrs


def _agent_id(mission: dict[str, Any]) -> str | None:
    """The mission's agentId as text, or None for a legacy mission."""
    if is_legacy(mission):
        return None
    value = mission.get("agentId")
    return value if isinstance(value, str) else str(value)
