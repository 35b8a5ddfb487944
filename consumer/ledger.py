"""The dispatch ledger and the token usage table: the scheduler's durable state.

Ledger. A due *occurrence* is (user, mission, the raw nextRunAt string). A `ran` decision is
claimed here BEFORE the run is dispatched: the primary key lets exactly one claimant insert
the row, so an occurrence runs at most once across restarts and replicas, until a device
(or the runner, for interval cadences) moves nextRunAt. Skipped decisions are not written:
they are decided again when the agent, the mission or a slot changes.

A run that was in flight when its process died keeps `finished_at` NULL. It is not retried:
at most once beats a duplicate plan (DESIGN §5); operators find such rows by that NULL.

Usage. One row per planner call; the budget gate sums the last 24 h per (user, agent).
"""

from __future__ import annotations

from datetime import datetime

import msgspec
import psycopg

from .sql import load

OUTCOME_RECORDED = "recorded"  # the default dispatcher ran nothing: it only recorded the claim
OUTCOME_OK = "ok"
OUTCOME_ERROR = "error"
OUTCOME_CANCELLED = "cancelled"


class Occurrence(msgspec.Struct, frozen=True):
    user_id: str
    mission_id: str
    next_run_at: str  # the raw string, exactly as in the record


class Claim(msgspec.Struct, frozen=True):
    occ: Occurrence
    decision: str
    reason: str
    agent_id: str | None


async def claim_many(conn: psycopg.AsyncConnection, claims: list[Claim]) -> set[Occurrence]:
    """Claim occurrences in one committed transaction; returns those this caller won."""
    if not claims:
        return set()
    async with conn.transaction():
        cur = await conn.execute(
            load("ledger_claim"),
            {
                "users": [c.occ.user_id for c in claims],
                "missions": [c.occ.mission_id for c in claims],
                "next_run_ats": [c.occ.next_run_at for c in claims],
                "decisions": [c.decision for c in claims],
                "reasons": [c.reason for c in claims],
                "agents": [c.agent_id for c in claims],
            },
        )
        return {Occurrence(u, m, n) for u, m, n in await cur.fetchall()}


async def finish(conn: psycopg.AsyncConnection, occ: Occurrence, outcome: str) -> None:
    async with conn.transaction():
        await conn.execute(
            load("ledger_finish"),
            {
                "user_id": occ.user_id,
                "mission_id": occ.mission_id,
                "next_run_at": occ.next_run_at,
                "outcome": outcome,
            },
        )


async def prune(conn: psycopg.AsyncConnection, before: datetime) -> int:
    """Drop finished occurrences older than `before` whose mission has moved on."""
    async with conn.transaction():
        cur = await conn.execute(load("ledger_prune"), {"before": before})
        return cur.rowcount


async def usage_since(
    conn: psycopg.AsyncConnection, pairs: set[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], int]:
    """Tokens spent per (user, agent) after `since`; pairs without usage are absent."""
    if not pairs:
        return {}
    ordered = sorted(pairs)
    cur = await conn.execute(
        load("usage_24h"),
        {"users": [p[0] for p in ordered], "agents": [p[1] for p in ordered], "since": since},
    )
    return {(u, a): int(n) for u, a, n in await cur.fetchall()}


async def record_usage(
    conn: psycopg.AsyncConnection, user_id: str, agent_id: str, tokens: int
) -> None:
    """For the runner: count what a planner call cost the agent."""
    async with conn.transaction():
        await conn.execute(
            load("usage_record"), {"user_id": user_id, "agent_id": agent_id, "tokens": tokens}
        )


async def prune_usage(conn: psycopg.AsyncConnection, before: datetime) -> int:
    async with conn.transaction():
        cur = await conn.execute(load("usage_prune"), {"before": before})
        return cur.rowcount
