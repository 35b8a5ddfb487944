"""Reading the snapshot tables: the due index with its missions, agents, field clocks.

The query layer of the snapshot tables (mana_ai.mission_snapshots, mana_ai.mission_due,
mana_ai.agent_snapshots, mana_ai.record_clocks) for the code that reads them to decide and
run: the scheduler (through consumer/due.py) and the runner. Rows come back as Structs
with their JSON records decoded; what a row means (is it really due, which agent is found)
is for the callers to decide. The projection writes these tables (consumer/apply.py) and
the replay rebuilds them; neither goes through here.

Every function runs its statement on the connection it is given, inside whatever
transaction the caller holds, and commits nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import psycopg

from .sql import load

_decode = msgspec.json.Decoder(dict[str, Any])


class DueMission(msgspec.Struct, frozen=True):
    """A candidate read through the due index: an active, undeleted mission whose indexed
    instant has come and whose occurrence is not in the dispatch ledger yet."""

    user_id: str
    mission_id: str
    next_run_at: str | None  # the record's nextRunAt as written (None: not a string)
    record: dict[str, Any]
    due_at: datetime  # the index's instant (the record is the authority: see consumer/due.py)


class AgentRow(msgspec.Struct, frozen=True):
    user_id: str
    agent_id: str  # the snapshot's key, the log's record id (the record's `id` may differ)
    record: dict[str, Any]


async def due_missions(conn: psycopg.AsyncConnection, now: datetime) -> list[DueMission]:
    """Missions whose due instant is at or before `now` and not yet in the ledger."""
    cur = await conn.execute(load("snapshots/due_missions"), {"now": now})
    return [
        DueMission(user_id, mission_id, next_run_at, _decode.decode(body), due_at)
        for user_id, mission_id, next_run_at, body, due_at in await cur.fetchall()
    ]


async def next_due(conn: psycopg.AsyncConnection, now: datetime) -> datetime | None:
    """The first instant after `now` at which a mission falls due, if any does."""
    cur = await conn.execute(load("snapshots/due_next"), {"now": now})
    row = await cur.fetchone()
    return row[0] if row is not None else None


async def active_agents(conn: psycopg.AsyncConnection, users: set[str]) -> list[AgentRow]:
    """The agents of `users` whose deletedAt is absent or null, by (user, agent key)."""
    if not users:
        return []
    cur = await conn.execute(load("snapshots/agents"), {"users": sorted(users)})
    return [
        AgentRow(user_id, agent_id, _decode.decode(body))
        for user_id, agent_id, body in await cur.fetchall()
    ]


async def mission_clocks(
    conn: psycopg.AsyncConnection, user_id: str, mission_id: str
) -> bytes | None:
    """The projection's encoded field clocks of one mission (None: it has none)."""
    cur = await conn.execute(
        load("snapshots/mission_clocks"), {"user_id": user_id, "mission_id": mission_id}
    )
    row = await cur.fetchone()
    return bytes(row[0]) if row is not None else None
