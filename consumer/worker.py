"""The run worker: takes runnable occurrences from the ledger and runs them, on every process.

Every `consumer run` process, leader and standbys alike, runs one worker. The leader's
scheduler decides and inserts `claimed` occurrences; workers take them with FOR UPDATE SKIP
LOCKED (consumer/ledger.py), each up to its own limit of concurrent runs (`max_runs`), so
run throughput grows with the number of processes. Leases and claims are the only
coordination: PostgreSQL is the coordinator.

One attempt (`_attempt`):
- a "mission.run" span, a child of the decision span recorded with the claim (so a run on
  a standby still hangs under the leader's decision);
- the lease is renewed every lease/3 seconds while the run lives; a renewal that finds the
  lease gone (it expired and another process took it) stops the run at once;
- the dispatcher runs it. The Runner commits `done` with the write-back itself; another
  dispatcher's return value is recorded as the outcome here;
- RunFailed, LeaseLost or any exception: the attempt ended without writing. Retryable
  failures go back to `claimed`, runnable again after backoff * 2^(attempt-1) (capped, and
  never sooner than the planner's Retry-After), on any process; after `attempts` attempts,
  or for a failure no retry can fix, the occurrence is `failed` with its reason and an
  interval mission's nextRunAt is advanced anyway in the same transaction;
- cancelled (shutdown): the attempt is given back (not counted) and runnable at once;
- before the planner is called, the gates are checked again, with the mission as projected
  when the attempt was taken and its agent found as the scheduler finds it
  (`decisions.hold_at_attempt`): a claim may wait in the queue and a retry waits out its
  backoff, and meanwhile the agent may be paused, archived, deleted or out of budget, and
  the mission paused, deleted, moved to another instant or given to another agent. Then
  the attempt does not run and the occurrence is `released` (not counted): the mission
  stays due as it is, the scheduler decides it afresh, as upstream's next tick would, and
  its next claim takes the same row back, its attempts kept. A database error while
  checking gives the attempt back uncounted, runnable again after the first backoff.

A lease that expires (its process died, or stalled past it) is taken by the next `take`
anywhere; the stalled process, should it wake, finds its fence gone and writes nothing.

Wake-ups: `poke()` (the local scheduler just claimed something), a finished run (a slot
freed), the next wake_at in the ledger (a backoff ending, a lease expiring), and `poll`
seconds at most, which also covers claims made by a leader in another process.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Protocol

import anyio
import anyio.abc
import psycopg
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
from psycopg_pool import AsyncConnectionPool

from . import ledger, metrics, shutdown, snapshots
from .decisions import Hold, agent_gate_inputs, hold_at_attempt
from .due import key_agents
from .instants import utcnow
from .ledger import Job
from .runner import LeaseLost, RunFailed, write_advance
from .telemetry import tracer as default_tracer

log = logging.getLogger(__name__)

FINISH_TIMEOUT = 5.0  # seconds a stopping run may spend giving its attempt back
MIN_POLL = 0.01


class Dispatcher(Protocol):
    """Runs one attempt. Returns its outcome (None means "ok"); raises RunFailed (or any
    exception) when it ended without writing. A dispatcher whose class sets
    `commits_done = True` marks the occurrence done itself, in its write-back transaction."""

    async def dispatch(self, job: Job) -> str | None: ...


class GatesUnknown(Exception):
    """The gates could not be checked (the database did not answer): the attempt is given
    back uncounted, runnable again after the first backoff."""


def owner_id() -> str:
    """This process's lease owner: readable in `consumer status`, unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def parent_context(job: Job) -> Any:
    """The decision span as a remote parent, when the claim recorded one."""
    if not job.trace_id or not job.parent_span:
        return None
    try:
        ctx = SpanContext(
            trace_id=int(job.trace_id, 16),
            span_id=int(job.parent_span, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except ValueError:
        return None
    return trace.set_span_in_context(NonRecordingSpan(ctx))


@asynccontextmanager
async def autocommit(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pool connection in autocommit, for the worker's one-statement transactions (take,
    renew, next wake): each statement commits alone, without BEGIN and COMMIT round trips.
    It goes back to the pool as the pool gives it out (not autocommit)."""
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            # Shielded: a cancellation must not hand the connection back in autocommit.
            with anyio.CancelScope(shield=True):
                if not conn.closed:
                    try:
                        await conn.set_autocommit(False)
                    except psycopg.Error:
                        pass  # a broken connection: the pool discards it


class RunWorker:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        dispatcher: Dispatcher,
        *,
        owner: str | None = None,
        max_runs: int = 16,
        lease: float = 60.0,
        attempts: int = 3,
        backoff: float = 30.0,
        max_backoff: float = 3600.0,
        poll: float = 1.0,
        tracer: trace.Tracer | None = None,
        on_finished: Callable[[str, str | None], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if max_runs < 1 or attempts < 1 or lease <= 0 or poll <= 0:
            raise ValueError("max_runs and attempts must be >= 1, lease and poll positive")
        self.pool = pool
        self.dispatcher = dispatcher
        self.owner = owner or owner_id()
        self.max_runs = max_runs
        self.lease = lease
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll = poll
        self.tracer = tracer if tracer is not None else default_tracer()
        self.on_finished = on_finished  # (user, agent) of a run that ended: a slot freed
        self.clock = clock
        self.running: dict[tuple[str, str, datetime], Job] = {}
        self._lost: set[tuple[str, str, datetime]] = set()  # leases the renewal found gone
        self._wake: anyio.Event | None = None
        self._pending = False

    # ------------------------------------------------------------------ wake-ups

    def poke(self) -> None:
        self._pending = True
        if self._wake is not None:
            self._wake.set()

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        failures = 0
        async with anyio.create_task_group() as tg:
            while True:
                self._wake = anyio.Event()
                self._pending = False
                try:
                    with shutdown.finishing():  # see consumer/shutdown.py
                        await self.fill(tg)
                        delay = await self._sleep_seconds()
                    failures = 0
                except Exception:
                    failures += 1
                    delay = min(30.0, 0.25 * 2**failures)
                    log.exception("taking runs failed; retrying in %.2f s", delay)
                if self._pending:
                    continue
                with anyio.move_on_after(delay):
                    await self._wake.wait()

    async def _sleep_seconds(self) -> float:
        if len(self.running) >= self.max_runs:
            return self.poll  # a finishing run pokes
        async with autocommit(self.pool) as conn:
            at = await ledger.next_wake(conn)
        if at is None:
            return self.poll
        return min(self.poll, max(MIN_POLL, (at - self.clock()).total_seconds() + 0.005))

    async def fill(self, tg: anyio.abc.TaskGroup) -> list[Job]:
        """Take what this process has room for and start it in `tg`."""
        free = self.max_runs - len(self.running)
        if free <= 0:
            return []
        async with autocommit(self.pool) as conn:
            jobs = await ledger.take(conn, self.owner, free, self.lease, list(self.running))
        # From here to the runs' start nothing awaits: a cancellation cannot strand a lease.
        for job in jobs:
            if job.lease_expired:
                metrics.LEASES_EXPIRED.inc()
                log.warning(
                    "mission %s of %s (%s): lease expired, taking over as attempt %d",
                    job.mission_id, job.user_id, job.next_run_at, job.attempt,
                )
            self.running[(job.user_id, job.mission_id, job.due_at)] = job
            metrics.RUNS_IN_FLIGHT.inc()
            tg.start_soon(self._attempt, job)
        return jobs

    async def drain(self) -> None:
        """Take and run until nothing is runnable now (tests, tools)."""
        async with anyio.create_task_group() as tg:
            while True:
                await self.fill(tg)
                if not self.running:
                    return
                await anyio.sleep(0.01)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, job: Job) -> None:
        attrs: dict[str, Any] = {
            "mission.id": job.mission_id,
            "user.id": job.user_id,
            "mission.due_at": job.next_run_at,
            "run.attempt": job.attempt,
            "run.owner": self.owner,
        }
        if job.agent_id is not None:
            attrs["agent.id"] = job.agent_id
        try:
            with self.tracer.start_as_current_span(
                "mission.run", context=parent_context(job), attributes=attrs
            ) as span:
                outcome = await self._run_leased(job, span)
                span.set_attribute("run.outcome", outcome)
        except Exception:
            # Recording the end failed (the database went away): the lease runs out and
            # the occurrence is taken again; the worker and the service go on.
            log.exception(
                "mission %s of %s (%s): recording the end of attempt %d failed; it is tried "
                "again when the lease expires", job.mission_id, job.user_id, job.next_run_at,
                job.attempt,
            )
        finally:
            self.running.pop((job.user_id, job.mission_id, job.due_at), None)
            metrics.RUNS_IN_FLIGHT.dec()
            if self.on_finished is not None:
                self.on_finished(job.user_id, job.agent_id)
            self.poke()  # a slot is free

    async def _run_leased(self, job: Job, span: trace.Span) -> str:
        key = (job.user_id, job.mission_id, job.due_at)
        if job.attempt > self.attempts:
            # The last attempt's process died with the lease: no further attempt.
            return await self._failed(job, span, RunFailed(
                "the last attempt's lease expired", outcome="lease-expired", retryable=False))
        result: str | None = None
        error: Exception | None = None
        hold: Hold | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, job, tg.cancel_scope)
                try:
                    # Under the lease like the run: a shutdown gives the attempt back.
                    hold = await self._hold(job)
                    if hold is None:
                        result = await self.dispatcher.dispatch(job)
                except Exception as exc:  # not a cancellation: that must propagate
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            if key not in self._lost:
                with anyio.move_on_after(FINISH_TIMEOUT, shield=True):
                    await self._give_back(job)
            self._lost.discard(key)
            metrics.RUNS.labels(outcome="stopped").inc()
            raise
        if key in self._lost:
            # The renewal found the lease gone and stopped the run: another process has it.
            self._lost.discard(key)
            error = LeaseLost("lease lost while running")
        if isinstance(error, LeaseLost):
            metrics.RUNS.labels(outcome="lost").inc()
            span.set_attribute("run.lease_lost", True)
            log.warning("mission %s of %s: %s", job.mission_id, job.user_id, error)
            return "lost"
        if isinstance(error, RunFailed):
            return await self._failed(job, span, error)
        if isinstance(error, GatesUnknown):
            # The planner was not called: the attempt is given back, not counted.
            log.warning("mission %s of %s (%s): %s; tried again in %.1f s", job.mission_id,
                        job.user_id, job.next_run_at, error, self.backoff)
            with anyio.move_on_after(FINISH_TIMEOUT, shield=True):
                await self._give_back(job, str(error), delay=self.backoff)
            metrics.RUNS.labels(outcome="retry").inc()
            return "retry"
        if hold is not None:
            return await self._release(job, span, hold)
        if error is not None:
            metrics.MISSION_ERRORS.inc()
            log.error(
                "run of mission %s (%s) failed", job.mission_id, job.next_run_at,
                exc_info=error,
            )
            failure = RunFailed(f"{type(error).__name__}: {error}", outcome="error")
            return await self._failed(job, span, failure)

        outcome = result or ledger.OUTCOME_OK
        if not getattr(self.dispatcher, "commits_done", False):
            async with self.pool.connection() as conn, conn.transaction():
                if not await ledger.mark_done(conn, job, outcome):
                    metrics.RUNS.labels(outcome="lost").inc()
                    return "lost"
        metrics.RUNS.labels(outcome=outcome).inc()
        metrics.RUN_ATTEMPTS.observe(job.attempt)
        return outcome

    async def _hold(self, job: Job) -> Hold | None:
        """What stops this attempt now (see the module docstring), or None. Sets job.agent:
        the claim's agent found as the scheduler finds it (consumer/due.py), so the gates
        and the prompt read the record the scheduler decided on. GatesUnknown when the
        database could not tell."""
        tokens = 0
        try:
            if job.agent_id is not None:
                async with autocommit(self.pool) as conn:
                    agents = key_agents(await snapshots.active_agents(conn, {job.user_id}))
                    job.agent = agents.get((job.user_id, job.agent_id))
                    if job.agent is not None and (
                        agent_gate_inputs(job.agent).max_tokens_per_day is not None
                    ):
                        pair = (job.user_id, job.agent_id)
                        tokens = (await ledger.usage_within(conn, {pair})).get(pair, 0)
        except psycopg.Error as exc:  # the pool's timeout too; a fault of ours counts (failed)
            raise GatesUnknown(f"checking the gates failed: {type(exc).__name__}: {exc}") from exc
        return hold_at_attempt(job.mission, job.agent, job.agent_id, job.due_at, tokens)

    async def _release(self, job: Job, span: trace.Span, hold: Hold) -> str:
        span.set_attribute("run.gate", hold.gate)
        span.set_attribute("run.gate_reason", hold.reason)
        released: bool | None = None
        with shutdown.finishing():
            async with autocommit(self.pool) as conn:
                released = await ledger.release(conn, job, hold.gate)
        if released is None:
            # Cut off by the shutdown's grace: the lease runs out and the next take checks
            # the gates again.
            metrics.RUNS.labels(outcome="stopped").inc()
            return "stopped"
        if not released:
            metrics.RUNS.labels(outcome="lost").inc()
            return "lost"
        metrics.RUNS.labels(outcome="released").inc()
        log.info(
            "mission %s of %s (%s): attempt %d not run: %s (%s); released, the scheduler "
            "decides it again", job.mission_id, job.user_id, job.next_run_at, job.attempt,
            hold.gate, hold.reason,
        )
        return "released"

    async def _renew(self, job: Job, scope: anyio.CancelScope) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                with shutdown.finishing():
                    async with autocommit(self.pool) as conn:
                        renewed = await ledger.renew(conn, job, self.lease)
            except Exception:
                log.warning("renewing the lease of %s failed", job.mission_id, exc_info=True)
                continue  # the fence still protects the write; try again
            if renewed == ledger.FINISHED:
                return  # the attempt's own end committed meanwhile: nothing to stop
            if renewed == ledger.LOST:
                self._lost.add((job.user_id, job.mission_id, job.due_at))
                scope.cancel()
                return

    def _delay(self, job: Job, exc: RunFailed) -> float:
        delay = min(self.max_backoff, self.backoff * 2 ** (job.attempt - 1))
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return delay

    async def _failed(self, job: Job, span: trace.Span, exc: RunFailed) -> str:
        final = job.attempt >= self.attempts or not exc.retryable
        reason = f"{exc.outcome}: {exc}"
        span.set_status(Status(StatusCode.ERROR, reason[:500]))
        delay = 0.0 if final else self._delay(job, exc)
        advanced = None
        with anyio.move_on_after(FINISH_TIMEOUT, shield=True):
            async with self.pool.connection() as conn, conn.transaction():
                if not await ledger.mark_retry(
                    conn, job, error=reason, final=final, delay=delay, outcome=exc.outcome
                ):
                    metrics.RUNS.labels(outcome="lost").inc()
                    return "lost"
                if final:
                    advanced = await write_advance(conn, job, self.clock())
        if final:
            metrics.RUNS.labels(outcome="failed").inc()
            metrics.RUN_ATTEMPTS.observe(job.attempt)
            log.error(
                "mission %s of %s (%s) failed after attempt %d: %s%s",
                job.mission_id, job.user_id, job.next_run_at, job.attempt, reason,
                f"; nextRunAt advanced to {advanced}" if advanced else "",
            )
            if advanced:
                span.set_attribute("mission.next_run_at", advanced)
            return "failed"
        metrics.RUNS.labels(outcome="retry").inc()
        log.warning(
            "mission %s of %s (%s): attempt %d failed (%s); next attempt in %.1f s",
            job.mission_id, job.user_id, job.next_run_at, job.attempt, reason, delay,
        )
        span.set_attribute("run.retry_in_s", delay)
        return "retry"

    async def _give_back(
        self, job: Job, error: str = "stopped: the process shut down during the run",
        delay: float = 0.0,
    ) -> None:
        """The attempt did not count: runnable again after `delay` seconds, on any process."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await ledger.mark_retry(
                    conn, job, error=error, final=False, refund=True, delay=delay,
                )
        except Exception:
            log.warning("could not give back the lease of %s", job.mission_id, exc_info=True)

