"""The runner: a claimed occurrence -> prompt -> planner -> iteration written back (DESIGN §6).

`Runner` is the scheduler's Dispatcher. The scheduler calls `dispatch` after the ledger
claim, inside the decision span; one run is:

1. messages: prompt.build_messages (the <agent_context> block; ciphertext is never injected);
2. the planner call, in a "planner.request" span (a child of "mission.run", itself a child of
   the scheduler's "mission.decision");
3. parse. A reply that is not the plan we asked for bumps mana_ai_parse_failures_total and
   ends the run with outcome "parse-failure": counted, not a crash, nothing written to the
   log (the tokens it cost are still recorded for the agent's budget);
4. the iteration (fresh uuid4 id), its actor and the one sync_changes row
   (iteration.build_writeback), inserted inside a user-scoped transaction
   (db.user_transaction), so the RLS policy's WITH CHECK holds for the mission's user and
   the consumer's role needs no BYPASSRLS to write. The agent's token usage is recorded in
   the same transaction: a run is either written back and counted, or neither.

Outcomes (the ledger's `outcome` column): "written-back" when the iteration row was
inserted (the iteration's own overallStatus, approved or awaiting-review, is in the row and
on the span), "parse-failure" as above. Planner errors (PlannerError) and database errors
raise; the scheduler records "error" and counts mana_ai_mission_errors_total.

nextRunAt. Writing an iteration does not move a mission's nextRunAt: devices do, from the
mission's cadence. The exception (DESIGN §5) is an `interval` cadence,
{"kind": "interval", "everyMinutes": N} ("intervalMinutes" accepted too): the same row then
sets nextRunAt = the run's finish + N minutes (at least MIN_INTERVAL_MINUTES), stamped like
`iterations`, so the occurrence advances and the mission runs again on its cadence. Other
cadences leave nextRunAt alone; the dispatch ledger keeps the occurrence from re-running.

The consumer sees its own write-back through the journal like any other row: it lands in
mana_ai.mission_snapshots with the new iteration (and nextRunAt, for interval cadences).

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
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from opentelemetry import trace
from psycopg_pool import AsyncConnectionPool

from . import ledger, metrics
from .db import user_transaction
from .decisions import is_legacy
from .iteration import (
    ParseFailure,
    PlannerAnswer,
    WriteBack,
    build_actor,
    build_iteration,
    build_writeback,
    iso_ms,
    parse_planner_reply,
)
from .planner import PlannerClient
from .prompt import build_messages
from .sql import load
from .telemetry import tracer as default_tracer

log = logging.getLogger(__name__)

OUTCOME_WRITTEN_BACK = "written-back"
OUTCOME_PARSE_FAILURE = "parse-failure"
# A floor for interval cadences: a fractional or tiny everyMinutes must not turn a mission
# into a planner busy loop.
MIN_INTERVAL_MINUTES = 1.0

_json = msgspec.json.Encoder()


def _utcnow() -> datetime:
    return datetime.now(UTC)


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


def rationale_of(answer: PlannerAnswer) -> str:
    """The actor's rationale: the plan's summary, else the first step's rationale."""
    if answer.summary:
        return answer.summary
    return answer.steps[0].rationale if answer.steps else ""


def with_next_run(wb: WriteBack, next_run: datetime, stamp: str) -> WriteBack:
    """The write-back row, also moving nextRunAt (same row, same stamp as iterations)."""
    return msgspec.structs.replace(
        wb,
        data={**wb.data, "nextRunAt": iso_ms(next_run)},
        field_meta={**wb.field_meta, "nextRunAt": stamp},
    )


def insert_params(wb: WriteBack, change_id: str) -> dict[str, Any]:
    """Bound parameters of writeback_insert.sql; jsonb values go as JSON text."""
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


class Runner:
    """Plans a claimed occurrence and writes the iteration back. See the module docstring.

    Wiring: Scheduler(pool, ..., dispatcher=Runner(pool, planner, tracer=...)); the runner
    does not own the pool or the planner: whoever made them closes them.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        planner: PlannerClient,
        *,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.pool = pool
        self.planner = planner
        self.tracer = tracer if tracer is not None else default_tracer()
        self.clock = clock

    async def dispatch(
        self,
        mission: dict[str, Any],
        user_id: str,
        agent: dict[str, Any] | None,
        occurrence: str,
    ) -> str | None:
        mission_id = mission.get("id")
        agent_id = None if is_legacy(mission) else str(mission.get("agentId"))
        attrs: dict[str, Any] = {
            "mission.id": str(mission_id),
            "user.id": user_id,
            "mission.due_at": occurrence,
        }
        if agent_id is not None:
            attrs["agent.id"] = agent_id
        # Exceptions escaping the span are recorded on it and set its status to ERROR.
        with self.tracer.start_as_current_span("mission.run", attributes=attrs) as span:
            outcome = await self._run(span, mission, user_id, agent, agent_id)
            span.set_attribute("run.outcome", outcome)
            return outcome

    async def _run(
        self,
        span: trace.Span,
        mission: dict[str, Any],
        user_id: str,
        agent: dict[str, Any] | None,
        agent_id: str | None,
    ) -> str:
        mission_id = str(mission.get("id"))
        messages = build_messages(mission, agent)
        started_at = self.clock()
        with self.tracer.start_as_current_span("planner.request") as planner_span:
            reply = await self.planner.plan(messages)
            planner_span.set_attribute("planner.tokens", reply.total_tokens)
            if reply.model:
                planner_span.set_attribute("planner.model", reply.model)
        finished_at = self.clock()

        try:
            answer = parse_planner_reply(reply.content)
        except ParseFailure as exc:
            metrics.PARSE_FAILURES.inc()
            log.warning(
                "mission %s of %s: planner reply did not parse: %s", mission_id, user_id, exc
            )
            span.set_attribute("run.parse_failure", str(exc))
            if agent_id is not None and reply.total_tokens > 0:
                # Nothing is written, but the tokens were spent: the budget must see them,
                # or a model that keeps answering garbage would never hit its limit.
                async with self.pool.connection() as conn:
                    await ledger.record_usage(conn, user_id, agent_id, reply.total_tokens)
            return OUTCOME_PARSE_FAILURE
        metrics.PLANS_PRODUCED.inc()

        iteration_id = str(uuid.uuid4())
        iteration = build_iteration(answer, iteration_id, started_at, finished_at)
        actor = build_actor(mission_id, iteration_id, agent, rationale_of(answer))
        wb = build_writeback(mission, user_id, iteration, actor, finished_at)
        # Only an interval cadence is the runner's to advance (see the module docstring).
        next_run = next_run_after(mission.get("cadence"), finished_at)
        if next_run is not None:
            wb = with_next_run(wb, next_run, wb.field_meta["iterations"])
        change_id = str(uuid.uuid4())
        span.set_attributes(
            {
                "iteration.id": iteration_id,
                "iteration.steps": len(iteration["plan"]),
                "iteration.status": iteration["overallStatus"],
                "writeback.change_id": change_id,
            }
        )
        if next_run is not None:
            span.set_attribute("mission.next_run_at", wb.data["nextRunAt"])

        with self.tracer.start_as_current_span("runner.writeback"):
            async with self.pool.connection() as conn:
                async with user_transaction(conn, user_id):
                    await conn.execute(load("writeback_insert"), insert_params(wb, change_id))
                    if agent_id is not None and reply.total_tokens > 0:
                        await ledger.record_usage(conn, user_id, agent_id, reply.total_tokens)
        metrics.PLANS_WRITTEN_BACK.inc()
        log.info(
            "mission %s of %s: iteration %s written back (%d steps, %s, %d tokens)",
            mission_id,
            user_id,
            iteration_id,
            len(iteration["plan"]),
            iteration["overallStatus"],
            reply.total_tokens,
        )
        return OUTCOME_WRITTEN_BACK
