"""The scheduler: sleeps until the next nextRunAt, decides due missions, claims runs.

Loop. `run()` does a pass, then sleeps until the next instant a mission falls due (capped
by `max_sleep`), woken early by the projection (`notify_changed`) or by a run that
finishes. A pass never reads the log: it selects due missions from the snapshots through
the due index and decides each with `decisions.decide` (docs/architecture.md#decisions).

Due selection. A pass starts with a `DueSelector` (consumer/due.py): the due occurrences
read through the due index, the next instant one falls due, and the due users' agents.
The scheduler reads the gates' ledger state (tokens spent, runs in flight) beside them, in
the same transaction.

At most once per occurrence. An occurrence is (user, mission, nextRunAt as a UTC instant).
The `ran` decisions of a pass are recorded in the dispatch ledger as `claimed`, in one
statement and one commit (consumer/ledger.py); the run workers of every process take them
from there (consumer/worker.py). Only the leader runs a scheduler. A claim that finds its
occurrence already in the ledger (another spelling of the same instant, a deposed leader)
is lost: its decision span says so (claim.lost) and nothing runs; later passes do not see
the occurrence (the due query skips ledgered occurrences), unless an attempt released it
(a gate closed before it ran): then it is decided afresh and a `ran` claims the same row
back. With no planner configured
(`claims=False`) `ran` decisions are traced once per occurrence and nothing is claimed, so
a planner configured later runs what is due then.

Spans and metrics. One "scheduler.pass" span per pass, one "mission.decision" child per
decision. A skipped occurrence stays due and is decided again on every pass; to keep traces
readable, its span (and its mana_ai_agent_decisions_total bump) is emitted only when its
decision changes, or again once `max_sleep` has passed since it was last emitted (a
heartbeat for a mission that stays stuck). The memory of last decisions holds only
occurrences still due, so it is bounded by the due set. mana_ai_decision_lateness_seconds
is observed once per occurrence, at its first decision in this process (and again when
an attempt released it and it is decided afresh).

In flight. The concurrency gate counts an agent's live occurrences in the ledger, queued
(`claimed`) and running on any process, read once per pass; a `ran` decided in the pass
takes a slot at once, so the next mission of the same pass sees it. A run ending in this
process wakes the loop when its agent has a mission deferred by `skipped-concurrency`
(`slot_freed`); runs ending elsewhere are seen by polling: while a mission is deferred the
loop sleeps at most DEFERRED_POLL.

Housekeeping. `run()` prunes finished ledger rows whose mission moved on and token usage
past the budget window every `prune_every` seconds (mana_ai_ledger_pruned_rows_total).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.abc
import msgspec
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from psycopg_pool import AsyncConnectionPool

from . import ledger, metrics, shutdown
from .apply import Applied
from .decisions import Decision, Verdict, agent_id_of, decide
from .decisions import agent_name as agent_name_of
from .due import Due, DueSelector
from .errors import Deposed
from .instants import iso, utcnow
from .ledger import BUDGET_WINDOW, Occurrence
from .telemetry import tracer as default_tracer
from .worker import Dispatcher, RunWorker

log = logging.getLogger(__name__)

LEGACY_AGENT_NAME = "Mana"  # display name of the default identity (legacy missions)
WAKE_EPSILON = 0.005  # seconds added to a timed sleep: a timer may fire a hair early
MIN_SLEEP = 0.001
MAX_BACKOFF = 30.0
DEFERRED_POLL = 1.0  # seconds between passes while a mission waits for a slot
PRUNE_FIRST = 60.0  # seconds from the start of a term to its first prune
LEDGER_KEEP = timedelta(days=7)  # finished occurrences are kept this long for operators


class InFlight:
    """Live occurrences per (user, agent) during one pass: the ledger's count at the pass's
    start (every process), plus the `ran` decided in the pass. Legacy runs count under None."""

    def __init__(self, counts: dict[tuple[str, str], int] | None = None) -> None:
        self._counts: dict[tuple[str, str | None], int] = {k: n for k, n in (counts or {}).items()}

    def get(self, user_id: str, agent_id: str | None) -> int:
        return self._counts.get((user_id, agent_id), 0)

    def acquire(self, user_id: str, agent_id: str | None) -> None:
        key = (user_id, agent_id)
        self._counts[key] = self._counts.get(key, 0) + 1

    def release(self, user_id: str, agent_id: str | None) -> None:
        key = (user_id, agent_id)
        left = self._counts.get(key, 0) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)

    def total(self) -> int:
        return sum(self._counts.values())


class DecisionRecord(msgspec.Struct, frozen=True):
    """One decision of a pass (lost ledger claims are not listed: another scheduler ran it)."""

    user_id: str
    mission_id: str
    occurrence: str  # the raw nextRunAt string
    due_at: datetime  # the occurrence's key: nextRunAt as a UTC instant
    agent_id: str | None
    agent_name: str | None
    decision: Decision
    reason: str
    lateness_s: float
    emitted: bool  # a span was emitted (new or changed decision, or the max_sleep heartbeat)
    dispatched: bool  # claimed in the ledger for the run workers


class _Decided(msgspec.Struct):
    d: Due
    verdict: Verdict
    agent: dict[str, Any] | None
    agent_id: str | None
    agent_name: str | None
    lateness: float  # seconds from nextRunAt to the decision


class Scheduler:
    """Due missions -> decisions -> runs. Wiring, in the service's task group:

    worker = RunWorker(pool, runner, ...)        # every process, leader or not
    scheduler = Scheduler(pool, tracer=telemetry.tracer(), max_sleep=settings.max_sleep,
                          on_claimed=worker.poke)  # the leader only
    worker.on_finished = scheduler.slot_freed
    projector.on_applied = scheduler.notify_changed
    tg.start_soon(scheduler.run)

    `dispatcher=` instead wires a RunWorker of the scheduler's own, run in its task group
    (tests and tools: one object decides and runs). `claims=False` (no planner): decide and
    trace, claim nothing. `claim_fence` runs inside the claim's transaction before the
    insert (raise to refuse the claim); without one, a scheduler given a leader `epoch`
    fences its claims with it (ledger.epoch_fence), so a deposed leader claims nothing.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        tracer: trace.Tracer | None = None,
        max_sleep: float = 60.0,
        dispatcher: Dispatcher | None = None,
        claims: bool = True,
        on_claimed: Callable[[], None] | None = None,
        claim_fence: ledger.ClaimFence | None = None,
        prune_every: float = 3600.0,
        worker_options: dict[str, Any] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if max_sleep <= 0:
            raise ValueError("max_sleep must be positive")
        self.pool = pool
        self.tracer = tracer if tracer is not None else default_tracer()
        self.max_sleep = max_sleep
        self.clock = clock
        self.claims = claims
        self.claim_fence = claim_fence
        self.prune_every = prune_every
        self.worker: RunWorker | None = None
        if dispatcher is not None:
            self.worker = RunWorker(
                pool, dispatcher, tracer=self.tracer, on_finished=self.slot_freed,
                clock=clock, **(worker_options or {}),
            )
            on_claimed = self.worker.poke
        self.on_claimed = on_claimed
        self.in_flight = InFlight()  # the last pass's counts
        self.selector = DueSelector()
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

    @property
    def next_due(self) -> datetime | None:
        """The next due instant after the last pass (None: nothing will fall due)."""
        return self.selector.next_due

    # ------------------------------------------------------------------ wake-ups

    def notify_changed(self, applied: Applied | None = None) -> None:
        """Projection hook (Projector.on_applied): missions or agents changed, look again.

        Synchronous and cheap; call it on the event loop's thread. Any change wakes the loop:
        a pass costs one indexed query, and wakes during a pass fold into one more pass.
        """
        self._poke()

    def _poke(self) -> None:
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    def _fence(self) -> ledger.ClaimFence | None:
        if self.claim_fence is not None:
            return self.claim_fence
        return ledger.epoch_fence(self.epoch) if self.epoch is not None else None

    def slot_freed(self, user_id: str, agent_id: str | None) -> None:
        """A run of this agent ended in this process: a deferred mission may run now."""
        if (user_id, agent_id) in self._deferred:
            self._poke()

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        """Pass, sleep until the next nextRunAt (at most max_sleep) or a wake, forever."""
        failures = 0
        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.worker is not None:
                tg.start_soon(self.worker.run)
            if self.prune_every > 0:
                tg.start_soon(self._prune_loop)
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
        cap = min(self.max_sleep, DEFERRED_POLL) if self._deferred else self.max_sleep
        if self.next_due is None:
            return cap
        delta = (self.next_due - self.clock()).total_seconds() + WAKE_EPSILON
        return min(cap, max(delta, MIN_SLEEP))

    # ------------------------------------------------------------------ one pass

    async def run_pass(self) -> list[DecisionRecord]:
        """One pass over the due missions.

        Called on its own (tests, tools) with a dispatcher, it also runs what it claimed
        before returning; inside run(), the worker runs them.
        """
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            started = time.perf_counter()
            try:
                with self.tracer.start_as_current_span("scheduler.pass") as span:
                    records = await self._pass(span)
                if self._tg is None and self.worker is not None:
                    await self.worker.drain()
                return records
            finally:
                metrics.TICKS.inc()
                metrics.TICK_DURATION.observe(time.perf_counter() - started)

    async def _pass(self, span: trace.Span) -> list[DecisionRecord]:
        now = self.clock()
        self._deferred = set()
        if not self.leading():
            raise Deposed("not the leader")
        async with self.pool.connection() as conn:
            async with conn.transaction():
                selected = await self.selector.select(conn, now)
                due, agents = selected.due, selected.agents
                users = {d.occ.user_id for d in due}
                usage = await ledger.usage_within(conn, selected.agent_pairs())
                self.in_flight = InFlight(await ledger.live_counts(conn, users))
            decided = [x for d in due if (x := self._decide(d, agents, usage)) is not None]
            ran = [x for x in decided if x.verdict.decision is Decision.RAN]
            spans: dict[Occurrence, trace.Span] = {}
            won: set[tuple[str, str, datetime]] = set()
            if self.claims and ran:
                # The decision spans open before the claim, so the claim can carry their ids:
                # the run span, on whichever process runs it, is their child.
                claims = []
                for x in ran:
                    s = spans[x.d.occ] = self._open_span(x)
                    ctx = s.get_span_context()
                    traced = ctx.is_valid
                    claims.append(
                        ledger.Claim(
                            x.d.occ,
                            x.verdict.reason,
                            x.agent_id,
                            f"{ctx.trace_id:032x}" if traced else None,
                            f"{ctx.span_id:016x}" if traced else None,
                        )
                    )
                try:
                    if not self.leading():
                        raise Deposed("leadership lost during the pass")
                    won = await ledger.claim_many(conn, claims, self._fence())
                except BaseException as exc:
                    for s in spans.values():
                        s.set_status(Status(StatusCode.ERROR, f"claim failed: {exc!r}"[:500]))
                        s.end()
                    raise
            records = self._settle(decided, ran, won, spans)
        if won and self.on_claimed is not None:
            self.on_claimed()

        # Forget occurrences no longer due (moved, claimed, paused mission, deleted).
        still_due = {d.occ for d in due}
        self._last = {
            k: v for k, v in self._last.items() if k in still_due and k.key not in won
        }

        span.set_attribute("scheduler.candidates", selected.candidates)
        span.set_attribute("scheduler.due", len(due))
        span.set_attribute("scheduler.emitted", sum(r.emitted for r in records))
        span.set_attribute("scheduler.dispatched", sum(r.dispatched for r in records))
        span.set_attribute("scheduler.in_flight", self.in_flight.total())
        if self.next_due is not None:
            span.set_attribute("scheduler.next_due", iso(self.next_due, digits=6))
        return records

    def _settle(
        self,
        decided: list[_Decided],
        ran: list[_Decided],
        won: set[tuple[str, str, datetime]],
        spans: dict[Occurrence, trace.Span],
    ) -> list[DecisionRecord]:
        """After the claim: close the claim's spans, emit the other decisions."""
        # A lost claim: the occurrence was in the ledger already. Its slot was counted while
        # deciding, so a later mission of the same agent may have been deferred for nothing:
        # those decisions are dropped unemitted and a new pass decides them again.
        lost_agents: set[tuple[str, str | None]] = set()
        if self.claims:
            for x in ran:
                if x.d.occ.key not in won:
                    self.in_flight.release(x.d.occ.user_id, x.agent_id)
                    lost_agents.add((x.d.occ.user_id, x.agent_id))
                    self._last.pop(x.d.occ, None)
        records: list[DecisionRecord] = []
        redo = False
        for x in decided:
            decision = x.verdict.decision
            if decision is Decision.RAN and self.claims:
                s = spans[x.d.occ]
                if x.d.occ.key not in won:
                    s.set_attribute("claim.lost", True)  # already in the ledger: not ours
                    s.end()
                    continue
                s.end()
                records.append(self._record(x, emitted=True, dispatched=True))
                continue
            if (
                decision is Decision.SKIPPED_CONCURRENCY
                and (x.d.occ.user_id, x.agent_id) in lost_agents
            ):
                redo = True
                continue
            records.append(self._emit(x))
        if redo:
            self._poke()
        return records

    def _decide(
        self,
        d: Due,
        agents: dict[tuple[str, str], dict[str, Any]],
        usage: dict[tuple[str, str], int],
    ) -> _Decided | None:
        """Decide one due occurrence (no I/O). A `ran` takes its agent's slot at once, so the
        next decision of this pass sees it; the pass frees it again if the claim is lost."""
        occ, mission = d.occ, d.mission
        agent_id = agent_id_of(mission)
        agent = agents.get((occ.user_id, agent_id)) if agent_id is not None else None
        if agent_id is None:
            agent_name: str | None = LEGACY_AGENT_NAME
        else:
            agent_name = None if agent is None else agent_name_of(agent)
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

    def _attrs(self, x: _Decided) -> dict[str, Any]:
        attrs = _attributes(x.d.occ, x.agent_id, x.agent_name)
        attrs.update(
            {
                "decision": x.verdict.decision.value,
                "reason": x.verdict.reason,
                "mission.lateness_ms": round(x.lateness * 1000.0, 3),
            }
        )
        return attrs

    def _log(self, x: _Decided) -> None:
        occ = x.d.occ
        if x.agent_id is not None:
            metrics.AGENT_DECISIONS.labels(decision=x.verdict.decision.value).inc()
        log.info(
            "mission %s of %s (agent %s): %s, %s, %.0f ms late",
            occ.mission_id,
            occ.user_id,
            x.agent_name or x.agent_id,
            x.verdict.decision.value,
            x.verdict.reason,
            x.lateness * 1000.0,
        )

    def _open_span(self, x: _Decided) -> trace.Span:
        """The decision span of a `ran` about to be claimed; _settle ends it."""
        if x.d.occ not in self._last:
            metrics.DECISION_LATENESS.observe(x.lateness)
        self._last[x.d.occ] = (x.verdict.decision, time.monotonic())
        self._log(x)
        return self.tracer.start_span("mission.decision", attributes=self._attrs(x))

    def _emit(self, x: _Decided) -> DecisionRecord:
        """Span and metric for a decision that is new or changed (or the heartbeat)."""
        occ, decision = x.d.occ, x.verdict.decision
        mono = time.monotonic()
        prev = self._last.get(occ)
        if prev is None:
            metrics.DECISION_LATENESS.observe(x.lateness)
        # A `ran` that is not claimed (no planner) is traced once: it is the same decision
        # on every pass until something changes.
        heartbeat = (
            prev is not None
            and decision is not Decision.RAN
            and mono - prev[1] >= self.max_sleep
        )
        emit = prev is None or prev[0] is not decision or heartbeat
        if emit:
            self._last[occ] = (decision, mono)
            self._log(x)
            with self.tracer.start_as_current_span("mission.decision", attributes=self._attrs(x)):
                pass
        return self._record(x, emitted=emit, dispatched=False)

    def _record(self, x: _Decided, *, emitted: bool, dispatched: bool) -> DecisionRecord:
        occ = x.d.occ
        return DecisionRecord(
            user_id=occ.user_id,
            mission_id=occ.mission_id,
            occurrence=occ.next_run_at,
            due_at=x.d.at,
            agent_id=x.agent_id,
            agent_name=x.agent_name,
            decision=x.verdict.decision,
            reason=x.verdict.reason,
            lateness_s=x.lateness,
            emitted=emitted,
            dispatched=dispatched,
        )

    # ------------------------------------------------------------------ housekeeping

    async def prune(self, keep: timedelta = LEDGER_KEEP) -> tuple[int, int]:
        """Drop old ledger rows of missions that moved on, and usage past the budget window.

        Returns (ledger rows, usage rows) deleted. Cheap enough to call hourly.
        """
        now = self.clock()
        async with self.pool.connection() as conn:
            occurrences = await ledger.prune(conn, now - keep)
            usage = await ledger.prune_usage(conn, now - BUDGET_WINDOW - timedelta(hours=1))
        metrics.LEDGER_PRUNED.labels(table="dispatch_ledger").inc(occurrences)
        metrics.LEDGER_PRUNED.labels(table="token_usage").inc(usage)
        return occurrences, usage

    async def _prune_loop(self) -> None:
        # Soon after the term starts, then every prune_every: a leader that changes more
        # often than that still prunes.
        delay = min(self.prune_every, PRUNE_FIRST)
        while True:
            await anyio.sleep(delay)
            delay = self.prune_every
            try:
                occurrences, usage = await self.prune()
            except Exception:
                log.warning("pruning the ledger failed; trying again later", exc_info=True)
                continue
            if occurrences or usage:
                log.info("pruned %d ledger rows and %d usage rows", occurrences, usage)


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

