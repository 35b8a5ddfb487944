"""Due selection: which occurrences a scheduler pass decides, and when the next falls due.

mana_ai.mission_due holds, beside each snapshot that can fall due, its nextRunAt parsed to a
UTC instant (`decisions.due_instant`; written with the snapshot, see apply.py). A selection
reads `due_at <= now` and the next `due_at` after now, two range scans of one index, so
'+02:00', '-10:00' and 'Z' spellings are all found at their instant. Occurrences already in
the dispatch ledger are not read again (the due query skips them).

The record is the authority, not the index: each candidate's record is read again with
`due_instant` and only kept when that instant has come. Both are written in one transaction,
so they agree; the check keeps a hand-edited index from running a mission early. The
occurrence's key is the record's instant.

The agents of the pass's users are read with the missions, keyed as upstream finds them:
by the record's `id` (a data field `id` can differ from the snapshot's key), only those
with `deletedAt` absent or null. Of two agents with one `id`, the greatest key wins.

`DueSelector.select` does the reading (snapshots.py); `pick` and `key_agents` are the pure
rules it applies, tested on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec
import psycopg

from . import snapshots
from .decisions import agent_id_of, due_instant, js_string
from .ledger import Occurrence
from .snapshots import AgentRow, DueMission

AgentKey = tuple[str, str]  # (user, the agent record's id)


class Due(msgspec.Struct, frozen=True):
    """One due occurrence and the mission's record as selected."""

    occ: Occurrence
    mission: dict[str, Any]

    @property
    def at(self) -> datetime:
        return self.occ.due_at


class Selection(msgspec.Struct, frozen=True):
    """What one pass decides on."""

    due: list[Due]  # oldest first, then by user and mission
    candidates: int  # rows the due index gave (due or not by their record)
    next_due: datetime | None  # the first instant after `now` a mission falls due
    agents: dict[AgentKey, dict[str, Any]]  # the due users' agents, by (user, record id)

    def agent_pairs(self) -> set[AgentKey]:
        """(user, agent) of the due missions whose agent was found: the budget gate's keys."""
        return {
            (d.occ.user_id, aid)
            for d in self.due
            if (aid := agent_id_of(d.mission)) is not None and (d.occ.user_id, aid) in self.agents
        }


def pick(rows: Iterable[DueMission], now: datetime) -> list[Due]:
    """The candidates whose record is due at `now`, oldest first (then user, mission)."""
    due: list[Due] = []
    for row in rows:
        at = due_instant(row.record)
        if at is not None and at <= now:
            # A due spelling is a string, so next_run_at is one here.
            occ = Occurrence(row.user_id, row.mission_id, str(row.next_run_at), at)
            due.append(Due(occ, row.record))
    due.sort(key=lambda d: (d.occ.due_at, d.occ.user_id, d.occ.mission_id))
    return due


def key_agents(rows: Iterable[AgentRow]) -> dict[AgentKey, dict[str, Any]]:
    """Agents by (user, record id), as upstream finds them; rows come in key order, so of
    two with one id the last (the greatest key) wins."""
    return {(row.user_id, js_string(row.record.get("id"))): row.record for row in rows}


class DueSelector:
    """Selects a pass's due occurrences and agents; remembers when the next falls due."""

    def __init__(self) -> None:
        self.next_due: datetime | None = None  # after the last selection

    async def select(self, conn: psycopg.AsyncConnection, now: datetime) -> Selection:
        """The due occurrences at `now`, the next due instant and the due users' agents
        (three statements; call inside one transaction for one view of the snapshots)."""
        due, candidates = await self.occurrences(conn, now)
        agents = await self.agents(conn, {d.occ.user_id for d in due})
        return Selection(due, candidates, self.next_due, agents)

    async def occurrences(
        self, conn: psycopg.AsyncConnection, now: datetime
    ) -> tuple[list[Due], int]:
        """The due occurrences at `now` (see `pick`) and how many candidates the index gave;
        also sets `next_due`."""
        rows = await snapshots.due_missions(conn, now)
        self.next_due = await snapshots.next_due(conn, now)
        return pick(rows, now), len(rows)

    async def agents(
        self, conn: psycopg.AsyncConnection, users: set[str]
    ) -> dict[AgentKey, dict[str, Any]]:
        """The agents of `users` that upstream would load, keyed as it finds them."""
        return key_agents(await snapshots.active_agents(conn, users))
