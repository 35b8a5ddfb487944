"""The dispatch ledger and the token usage table: the durable state of decisions and runs.

Occurrence. A due occurrence is (user, mission, nextRunAt read as a UTC instant): the same
instant spelt '...00.000Z' by one client and '...00+00:00' by another is one occurrence.
The instant comes from the package's one parser (instants.parse_instant); the due query
compares with the due index's instant (mana_ai.mission_due.due_at), ledger/prune.sql with
mana_ai.next_run_instant(), the SQL twin that also fills that index.

Lifecycle, one row per occurrence:

    claimed --take--> running --done--> done
       ^                 |  \\--last attempt failed--> failed
       +--attempt failed-+  \\--a gate closed before it ran--> released
       +--lease expired (taken again as it stands)       (claimed again once due and open)

- The leader inserts `claimed` rows for its `ran` decisions (`claim_many`). The primary key
  lets an occurrence be claimed once, whatever spelling or replica (a `released` row is
  claimed again, the same row: see below).
- Any process takes runnable rows (`take`) with FOR UPDATE SKIP LOCKED into `running`,
  under a lease: an owner and an expiry (`wake_at`) it renews while the run lives (`renew`).
  The attempt number fences the lease: every later write names it.
- `done` commits in the same transaction as the write-back row (`mark_done`), so an
  occurrence never gets two iterations, whatever crashes.
- A run that ended without writing goes back to `claimed` with a backoff, or, after the
  last attempt, ends `failed` with its reason (`mark_retry`).
- A lease that expired makes the row runnable again: the next `take` starts a new attempt.
- Every attempt checks the gates again before it calls the planner (a claim may wait in the
  queue, a retry waits out its backoff). When one closed, the row is `released` (`release`):
  the mission is due as it was, the scheduler decides it afresh, and its next claim takes
  the same row back, attempts and all (ledger/claim.sql).

Skipped decisions are not written: they are decided again when the agent, the mission or a
slot changes.

Usage. One row per planner call; the budget gate sums the last 24 h per (user, agent).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import Any

import msgspec
import psycopg

from .errors import Deposed
from .sql import load
from .txn import one_statement

STATE_CLAIMED = "claimed"
STATE_RUNNING = "running"
STATE_DONE = "done"
STATE_FAILED = "failed"
LIVE_STATES = (STATE_CLAIMED, STATE_RUNNING)

BUDGET_WINDOW = timedelta(hours=24)  # the budget gate's rolling window of token usage

OUTCOME_OK = "ok"
OUTCOME_FAILED = "failed"

_decode = msgspec.json.Decoder(dict[str, Any])


class Occurrence(msgspec.Struct, frozen=True):
    user_id: str
    mission_id: str
    next_run_at: str  # the raw string, as first seen (for logs and spans)
    due_at: datetime  # the key: nextRunAt as a UTC instant

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.user_id, self.mission_id, self.due_at)


class Claim(msgspec.Struct, frozen=True):
    occ: Occurrence
    reason: str
    agent_id: str | None
    trace_id: str | None = None  # the decision span's trace, so the run span is its child
    parent_span: str | None = None


class Job(msgspec.Struct, kw_only=True):
    """One attempt at one occurrence, leased by `owner`; (owner, attempt) fence its writes."""

    user_id: str
    mission_id: str
    due_at: datetime
    next_run_at: str
    agent_id: str | None
    attempt: int
    owner: str
    trace_id: str | None
    parent_span: str | None
    lease_expired: bool  # taken over from a lease that ran out
    mission: dict[str, Any] | None  # the projected record now; None when it is gone
    # Its agent, found as the scheduler finds it (the worker sets it when it checks the
    # gates, before the run); None for a legacy mission or an agent not found.
    agent: dict[str, Any] | None = None

    def key_params(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "mission_id": self.mission_id,
            "due_at": self.due_at,
            "owner": self.owner,
            "attempt": self.attempt,
        }


# Runs first in the claim's transaction, so leadership can fence the insert (e.g. check the
# leader epoch and raise when this process is no longer the leader).
ClaimFence = Callable[[psycopg.AsyncConnection], Awaitable[None]]


def epoch_fence(epoch: int) -> ClaimFence:
    """A claim fence that refuses the claim (Deposed) once a newer leader took over."""

    async def fence(conn: psycopg.AsyncConnection) -> None:
        cur = await conn.execute(load("ledger/fence"), {"epoch": epoch})
        if await cur.fetchone() is None:
            raise Deposed(f"leader epoch {epoch} is gone: the claim is refused")

    return fence


async def claim_many(
    conn: psycopg.AsyncConnection, claims: list[Claim], fence: ClaimFence | None = None
) -> set[tuple[str, str, datetime]]:
    """Insert `claimed` rows in one committed transaction; returns the keys inserted."""
    if not claims:
        return set()
    async with conn.transaction():
        if fence is not None:
            await fence(conn)
        cur = await conn.execute(
            load("ledger/claim"),
            {
                "users": [c.occ.user_id for c in claims],
                "missions": [c.occ.mission_id for c in claims],
                "due_ats": [c.occ.due_at for c in claims],
                "next_run_ats": [c.occ.next_run_at for c in claims],
                "reasons": [c.reason for c in claims],
                "agents": [c.agent_id for c in claims],
                "trace_ids": [c.trace_id for c in claims],
                "parent_spans": [c.parent_span for c in claims],
            },
        )
        return {(u, m, d) for u, m, d in await cur.fetchall()}


async def live_counts(
    conn: psycopg.AsyncConnection, users: set[str]
) -> dict[tuple[str, str], int]:
    """Queued and running occurrences per (user, agent), across every process."""
    if not users:
        return {}
    cur = await conn.execute(load("ledger/live"), {"users": sorted(users)})
    return {(u, a): int(n) for u, a, n in await cur.fetchall()}


async def take(
    conn: psycopg.AsyncConnection,
    owner: str,
    limit: int,
    lease: float,
    busy: Collection[tuple[str, str, datetime]] = (),
) -> list[Job]:
    """Lease up to `limit` runnable occurrences for `owner` (one committed transaction),
    none of `busy` (the occurrences whose attempt `owner` still runs)."""
    if limit <= 0:
        return []
    async with one_statement(conn):
        cur = await conn.execute(
            load("ledger/take"),
            {
                "owner": owner,
                "limit": limit,
                "lease": lease,
                "busy_users": [k[0] for k in busy],
                "busy_missions": [k[1] for k in busy],
                "busy_due_ats": [k[2] for k in busy],
            },
        )
        rows = await cur.fetchall()
    jobs = []
    for (user_id, mission_id, due_at, text, agent_id, attempt, trace_id, parent_span, was,
         mission) in rows:
        jobs.append(
            Job(
                user_id=user_id,
                mission_id=mission_id,
                due_at=due_at,
                next_run_at=text,
                agent_id=agent_id,
                attempt=attempt,
                owner=owner,
                trace_id=trace_id,
                parent_span=parent_span,
                lease_expired=was == STATE_RUNNING,
                mission=_decode.decode(mission) if mission is not None else None,
            )
        )
    jobs.sort(key=lambda j: (j.due_at, j.user_id, j.mission_id))
    return jobs


RENEWED, FINISHED, LOST = "renewed", "finished", "lost"


async def renew(conn: psycopg.AsyncConnection, job: Job, lease: float) -> str:
    """Extend the job's lease: RENEWED; FINISHED when this attempt already ended the
    occurrence (its end committed meanwhile); LOST when the lease is another's."""
    async with one_statement(conn):
        cur = await conn.execute(load("ledger/renew"), {**job.key_params(), "lease": lease})
        row = await cur.fetchone()
    if row is not None and row[0]:
        return RENEWED
    return FINISHED if row is not None and row[1] else LOST


async def mark_done(
    conn: psycopg.AsyncConnection, job: Job, outcome: str, iteration_id: str | None = None
) -> bool:
    """`done`, inside the caller's transaction; False when the lease was lost (roll back)."""
    cur = await conn.execute(
        load("ledger/done"),
        {**job.key_params(), "outcome": outcome, "iteration_id": iteration_id},
    )
    return cur.rowcount == 1


async def mark_done_with_clocks(
    conn: psycopg.AsyncConnection,
    job: Job,
    outcome: str,
    iteration_id: str | None,
    *,
    agent_id: str | None,
    tokens: int,
) -> tuple[bool, bytes | None]:
    """The write-back's first statement, inside its transaction: `done` (as mark_done), the
    agent's tokens counted once it is done, and the mission's encoded field clocks (None when
    the projection has none). (False, _) when the lease was lost: roll back."""
    cur = await conn.execute(
        load("ledger/done_clocks"),
        {**job.key_params(), "outcome": outcome, "iteration_id": iteration_id,
         "agent_id": agent_id, "tokens": tokens},
    )
    row = await cur.fetchone()
    if row is None:
        return False, None
    done, clocks = row
    return bool(done), (bytes(clocks) if clocks is not None else None)


async def mark_retry(
    conn: psycopg.AsyncConnection,
    job: Job,
    *,
    error: str,
    final: bool,
    delay: float = 0.0,
    outcome: str = OUTCOME_FAILED,
    refund: bool = False,
) -> bool:
    """The attempt ended without writing, inside the caller's transaction: back to `claimed`
    after `delay` seconds, or `failed` for good when `final`. False when the lease was lost."""
    cur = await conn.execute(
        load("ledger/retry"),
        {
            **job.key_params(),
            "final": final,
            "delay": delay,
            "outcome": outcome,
            "error": error[:2000],
            "refund": 1 if refund else 0,
        },
    )
    return cur.rowcount == 1


async def release(conn: psycopg.AsyncConnection, job: Job, gate: str) -> bool:
    """A gate closed before this attempt ran: the occurrence is `released`, due again and
    decided afresh by the scheduler, its attempts kept (ledger/release.sql). False when the
    lease was lost."""
    cur = await conn.execute(load("ledger/release"), {**job.key_params(), "outcome": gate})
    return cur.rowcount == 1


async def next_wake(conn: psycopg.AsyncConnection) -> datetime | None:
    """When the next occurrence becomes runnable, if any is live."""
    cur = await conn.execute(load("ledger/next_wake"))
    row = await cur.fetchone()
    return row[0] if row else None


async def prune(conn: psycopg.AsyncConnection, before: datetime) -> int:
    """Drop finished occurrences older than `before` whose mission has moved on."""
    async with conn.transaction():
        cur = await conn.execute(load("ledger/prune"), {"before": before})
        return cur.rowcount


async def usage_within(
    conn: psycopg.AsyncConnection, pairs: set[tuple[str, str]], window: timedelta = BUDGET_WINDOW
) -> dict[tuple[str, str], int]:
    """Tokens spent per (user, agent) in the last `window` by the database's clock; pairs
    without usage are absent."""
    if not pairs:
        return {}
    ordered = sorted(pairs)
    cur = await conn.execute(
        load("ledger/usage_24h"),
        {"users": [p[0] for p in ordered], "agents": [p[1] for p in ordered], "window": window},
    )
    return {(u, a): int(n) for u, a, n in await cur.fetchall()}


async def record_usage(
    conn: psycopg.AsyncConnection, user_id: str, agent_id: str, tokens: int
) -> None:
    """Count what a planner call cost the agent (a savepoint in the caller's transaction)."""
    async with conn.transaction():
        await conn.execute(
            load("ledger/usage_record"),
            {"user_id": user_id, "agent_id": agent_id, "tokens": tokens},
        )


async def prune_usage(conn: psycopg.AsyncConnection, before: datetime) -> int:
    async with conn.transaction():
        cur = await conn.execute(load("ledger/usage_prune"), {"before": before})
        return cur.rowcount
