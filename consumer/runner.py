"""The runner: a leased occurrence -> prompt -> planner -> iteration written back.

`Runner` is the run worker's Dispatcher (consumer/worker.py). One attempt is:

1. the mission and agent as projected when the attempt took its lease (the worker has
   checked the gates on them and released the occurrence if one closed; a mission that is
   gone, deleted or no longer active still ends a direct call with RunFailed, not retried);
2. messages: prompt.build_messages (the <agent_context> block; ciphertext is never injected);
3. the planner call, in a "planner.request" span (a child of the worker's "mission.run",
   itself a child of the leader's "mission.decision"). A planner error ends the attempt
   with RunFailed: retried later when the planner says it may help (timeouts, 429, 5xx);
4. parse. A reply that is not the plan we asked for bumps mana_ai_parse_failures_total and
   ends the attempt (retried): counted, not a crash, nothing written to the log (the tokens
   it cost are still recorded for the agent's budget);
5. the iteration (fresh uuid4 id), its actor (rationale: the mission's objective) and the
   one sync_changes row, record_id = the snapshot's key. ONE transaction marks the ledger
   `done` (fenced by the attempt's lease: a lost lease rolls everything back), records the
   agent's token usage, then switches to the write role and inserts the row. So an
   occurrence gets exactly one iteration, whatever crashes.

The write role. The consumer's own role reads the log and may have BYPASSRLS; the row is
inserted after `SET LOCAL ROLE mana_ai_writeback` (NOLOGIN, no BYPASSRLS, INSERT on the log
only) with app.current_user_id set to the mission's user, so the policy's WITH CHECK really
refuses a row for anyone else. `consumer migrate` creates the role.

Stamps. The fields written (`iterations`, and `nextRunAt` for an interval cadence) are
stamped with the run's finish, or just past the field's current clock in the projection
when a device stamped it later (iteration.stamp_after): a device clock ahead of the server
cannot undo the advance.

nextRunAt. Writing an iteration does not move a mission's nextRunAt: devices do, from the
cadence. The exception is an `interval` cadence, {"kind": "interval", "everyMinutes": N}
("intervalMinutes" accepted too): the same row sets nextRunAt = finish + N minutes (at least
MIN_INTERVAL_MINUTES). When an interval occurrence fails for good, the worker advances it
anyway, in a row of its own (`write_advance`), so the mission goes on.

Known limits, inherited from upstream's data model: `iterations` is rewritten whole (last
writer wins on the field), so two writers appending at once keep one of the two new
iterations; and the array only grows, so a row past the projector's max_row_bytes would be
quarantined rather than applied.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg
from opentelemetry import trace
from psycopg_pool import AsyncConnectionPool

from . import ledger, metrics, shutdown, snapshots
from .decisions import is_legacy, runnable
from .instants import utcnow
from .iteration import (
    ParseFailure,
    WriteBack,
    build_actor,
    build_advance,
    build_iteration,
    build_writeback,
    parse_planner_reply,
    rationale_of,
    stamp_after,
    with_next_run,
)
from .ledger import Job
from .merge import decode_state, field_clock
from .migrate import WRITE_ROLE
from .planner import PlannerClient, PlannerError
from .prompt import build_messages
from .sql import load
from .telemetry import tracer as default_tracer

log = logging.getLogger(__name__)

OUTCOME_WRITTEN_BACK = "written-back"
OUTCOME_PARSE_FAILURE = "parse-failure"
OUTCOME_PLANNER_ERROR = "planner-error"
OUTCOME_GONE = "mission-gone"
# A floor for interval cadences: a fractional or tiny everyMinutes must not turn a mission
# into a planner busy loop.
MIN_INTERVAL_MINUTES = 1.0

_json = msgspec.json.Encoder()


class RunFailed(Exception):
    """An attempt ended without writing. `retryable`: another attempt may succeed;
    `retry_after`: not before this many seconds (the planner's Retry-After)."""

    def __init__(
        self,
        reason: str,
        *,
        outcome: str,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.retryable = retryable
        self.retry_after = retry_after


class LeaseLost(Exception):
    """The attempt's lease went to another process: its write-back was rolled back."""


def interval_minutes(cadence: Any) -> float | None:
    """N of an {"kind": "interval", "everyMinutes": N} cadence; None for anything else."""
    if not isinstance(cadence, dict) or cadence.get("kind") != "interval":
        return None
    minutes = cadence.get("everyMinutes")
    if minutes is None:
        minutes = cadence.get("intervalMinutes")
    if isinstance(minutes, bool) or not isinstance(minutes, int | float):
        return None
    if not math.isfinite(minutes) or minutes <= 0:
        return None
    return max(float(minutes), MIN_INTERVAL_MINUTES)


def next_run_after(cadence: Any, finished_at: datetime) -> datetime | None:
    """The next nextRunAt the runner writes for an interval cadence, else None."""
    minutes = interval_minutes(cadence)
    if minutes is None:
        return None
    try:
        return finished_at + timedelta(minutes=minutes)
    except OverflowError:
        return None  # an absurd interval: leave nextRunAt to the devices


def insert_params(wb: WriteBack, change_id: str) -> dict[str, Any]:
    """Bound parameters of ledger/writeback_insert.sql; jsonb values go as JSON text."""
    return {
        "id": change_id,
        "app_id": wb.app_id,
        "table_name": wb.table_name,
        "record_id": wb.record_id,
        "user_id": wb.user_id,
        "op": wb.op,
        "data": _json.encode(wb.data).decode(),
        "field_meta": _json.encode(wb.field_meta).decode(),
        "client_id": wb.client_id,
        "schema_version": wb.schema_version,
        "actor": _json.encode(wb.actor).decode(),
        "origin": wb.origin,
    }


def clocks_of(encoded: bytes | None, fields: tuple[str, ...]) -> list[int | None]:
    """The clocks (us) of `fields` in a mission's encoded clock state; None when unknown."""
    if encoded is None:
        return [None] * len(fields)
    state = decode_state(encoded)
    return [field_clock(state, f) for f in fields]


async def field_clocks(
    conn: psycopg.AsyncConnection, user_id: str, mission_id: str, fields: tuple[str, ...]
) -> list[int | None]:
    """The projection's current clocks (us) of the mission's `fields`; None when unknown."""
    return clocks_of(await snapshots.mission_clocks(conn, user_id, mission_id), fields)


async def insert_as_writer(conn: psycopg.AsyncConnection, wb: WriteBack, change_id: str) -> None:
    """Insert the row as the write role, for the row's user. Call inside a transaction: the
    role and the user last until it ends, and nothing after this in it runs as the consumer."""
    if not wb.user_id or not wb.user_id.strip():
        raise ValueError("refusing a write-back with an empty user id")
    await conn.execute(load("ledger/writeback_as"), {"role": WRITE_ROLE, "user_id": wb.user_id})
    await conn.execute(load("ledger/writeback_insert"), insert_params(wb, change_id))


async def write_advance(conn: psycopg.AsyncConnection, job: Job, now: datetime) -> str | None:
    """For an interval mission whose occurrence failed for good: its nextRunAt moved on, in
    a row of its own, inside the caller's transaction. Returns the new nextRunAt, or None
    when the mission has no interval cadence (or is gone)."""
    if not runnable(job.mission):
        return None
    assert job.mission is not None
    next_run = next_run_after(job.mission.get("cadence"), now)
    if next_run is None:
        return None
    (clock,) = await field_clocks(conn, job.user_id, job.mission_id, ("nextRunAt",))
    wb = build_advance(job.mission_id, job.user_id, next_run, stamp_after(now, [clock]))
    await insert_as_writer(conn, wb, str(uuid.uuid4()))
    return str(wb.data["nextRunAt"])


class Runner:
    """Plans a leased occurrence and writes the iteration back. See the module docstring.

    The runner does not own the pool or the planner: whoever made them closes them.
    """

    # The worker need not mark the occurrence done: the write-back transaction did.
    commits_done = True

    def __init__(
        self,
        pool: AsyncConnectionPool,
        planner: PlannerClient,
        *,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.pool = pool
        self.planner = planner
        self.tracer = tracer if tracer is not None else default_tracer()
        self.clock = clock

    async def dispatch(self, job: Job) -> str:
        """Run one attempt; returns its outcome, raises RunFailed or LeaseLost."""
        span = trace.get_current_span()
        mission, agent = job.mission, job.agent
        if mission is None or not runnable(mission):
            raise RunFailed(
                "mission is gone, deleted or no longer active", outcome=OUTCOME_GONE,
                retryable=False,
            )
        agent_id = None if is_legacy(mission) else job.agent_id
        user_id, mission_id = job.user_id, job.mission_id
        messages = build_messages(mission, agent)
        started_at = self.clock()
        with self.tracer.start_as_current_span("planner.request") as planner_span:
            try:
                reply = await self.planner.plan(messages)
            except PlannerError as exc:
                raise RunFailed(
                    str(exc), outcome=OUTCOME_PLANNER_ERROR, retryable=exc.retryable,
                    retry_after=exc.retry_after,
                ) from None
            planner_span.set_attribute("planner.tokens", reply.total_tokens)
            if reply.model:
                planner_span.set_attribute("planner.model", reply.model)
        finished_at = self.clock()

        try:
            answer = parse_planner_reply(reply.content)
        except ParseFailure as exc:
            metrics.PARSE_FAILURES.inc()
            span.set_attribute("run.parse_failure", str(exc))
            if agent_id is not None and reply.total_tokens > 0:
                # Nothing is written, but the tokens were spent: the budget must see them,
                # or a model that keeps answering garbage would never hit its limit.
                async with self.pool.connection() as conn:
                    await ledger.record_usage(conn, user_id, agent_id, reply.total_tokens)
            raise RunFailed(
                f"planner reply did not parse: {exc}", outcome=OUTCOME_PARSE_FAILURE
            ) from None
        metrics.PLANS_PRODUCED.inc()

        iteration_id = str(uuid.uuid4())
        iteration = build_iteration(answer, iteration_id, started_at, finished_at)
        actor = build_actor(mission_id, iteration_id, agent, rationale_of(mission))
        # Only an interval cadence is the runner's to advance (see the module docstring).
        next_run = next_run_after(mission.get("cadence"), finished_at)
        change_id = str(uuid.uuid4())
        span.set_attributes(
            {
                "iteration.id": iteration_id,
                "iteration.steps": len(iteration["plan"]),
                "iteration.status": iteration["overallStatus"],
                "writeback.change_id": change_id,
            }
        )

        # A shutdown lets the write-back transaction finish rather than cut it off mid-query
        # (consumer/shutdown.py): it commits the iteration and `done` together, or neither.
        # Pipeline mode: BEGIN goes with the first statement, and the role switch, the insert
        # and COMMIT go together: two round trips in all, the same statements and the same
        # transaction (an error in any of them rolls it all back and is raised here).
        with self.tracer.start_as_current_span("runner.writeback"), shutdown.finishing():
            async with self.pool.connection() as conn, conn.pipeline(), conn.transaction():
                # One round trip: done (fenced by the lease), the tokens, the field clocks.
                done, encoded = await ledger.mark_done_with_clocks(
                    conn, job, OUTCOME_WRITTEN_BACK, iteration_id,
                    agent_id=agent_id, tokens=reply.total_tokens,
                )
                if not done:
                    raise LeaseLost(f"lease of attempt {job.attempt} lost before write-back")
                fields = ("iterations", "nextRunAt") if next_run else ("iterations",)
                clocks = clocks_of(encoded, fields)
                stamp = stamp_after(finished_at, clocks)
                wb = build_writeback(mission, mission_id, user_id, iteration, actor, stamp)
                if next_run is not None:
                    wb = with_next_run(wb, next_run, stamp)
                    span.set_attribute("mission.next_run_at", wb.data["nextRunAt"])
                await insert_as_writer(conn, wb, change_id)
        metrics.PLANS_WRITTEN_BACK.inc()
        log.info(
            "mission %s of %s: iteration %s written back (%d steps, %s, %d tokens, attempt %d)",
            mission_id,
            user_id,
            iteration_id,
            len(iteration["plan"]),
            iteration["overallStatus"],
            reply.total_tokens,
            job.attempt,
        )
        return OUTCOME_WRITTEN_BACK
