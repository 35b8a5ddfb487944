"""Time the statements a consumer connection runs, by kind (a benchmark's breakdown of
where a pass goes): wrap the connection's execute and label each statement by its start.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

STATEMENTS = (
    ('WITH "clocks" AS', "snapshots write (+ CAS)"),
    ('WITH "quarantined" AS', "quarantine (+ CAS)"),
    ('WITH "moved" AS', "checkpoint CAS"),
    ("WITH snap AS MATERIALIZED", "journal read"),
    ("SELECT pg_try_advisory_lock", "doorbell arm"),
    ("SELECT false FROM (SELECT pg_advisory_unlock_all", "doorbell settle"),
    ("SELECT pg_current_snapshot", "snapshot"),
    ("SELECT j.xid", "journal read"),
    ("SELECT k.kind", "clocks load"),
    ('INSERT INTO "mana_ai"."record_clocks"', "clocks upsert"),
    ('INSERT INTO "mana_ai"."mission_snapshots"', "snapshots upsert"),
    ('INSERT INTO "mana_ai"."agent_snapshots"', "snapshots upsert"),
    ("DELETE FROM mana_ai.journal", "journal prune"),
    ("DELETE FROM", "snapshots delete"),
    ("UPDATE mana_ai.checkpoint", "checkpoint CAS"),
    ("SELECT applied_below", "checkpoint read"),
    ("SELECT mana_ai.still_leader", "leader probe (listener)"),
    ("INSERT INTO mana_ai.quarantine", "quarantine"),
)


class StatementTimer:
    """Wall seconds per kind of statement run on a cursor of the connection (so parameter
    dumping, the round trip and the server's work; commits and server-side cursor fetches
    are not statements and are not counted). In pipeline mode a statement's time is only
    its queueing."""

    def __init__(self, keep: bool = False) -> None:
        self.stmt: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.each: dict[str, list[float]] | None = {} if keep else None
        self._labels: dict[Any, str] = {}  # by query: labelling splits the whole text

    def instrument(self, conn: psycopg.AsyncConnection) -> None:
        """Every cursor of `conn` from now on times its statements: the connection's own
        execute and the cursors the projector keeps both make theirs through
        cursor_factory."""
        timer = self

        class Timed(conn.cursor_factory):  # type: ignore[name-defined, misc]
            async def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await super().execute(query, params, **kw)
                finally:
                    timer.count(conn, query, time.perf_counter() - started)

        conn.cursor_factory = Timed

    def count(self, conn: psycopg.AsyncConnection, query: Any, elapsed: float) -> None:
        label = self._labels.get(query) if isinstance(query, (bytes, str)) else None
        if label is None:
            if isinstance(query, bytes):
                text = query.decode()
            else:
                text = query if isinstance(query, str) else query.as_string(conn)
            label = self.label(text)
            if isinstance(query, (bytes, str)):
                self._labels[query] = label
        self.stmt[label] = self.stmt.get(label, 0.0) + elapsed
        self.calls[label] = self.calls.get(label, 0) + 1
        if self.each is not None:
            self.each.setdefault(label, []).append(elapsed)

    @staticmethod
    def label(text: str) -> str:
        # Comments go, whole lines or trailing ("WITH -- ..." starts a write whose first
        # part has a comment of its own); only the statement's start matters here.
        body = " ".join(
            code for line in text.splitlines() if (code := line.split("--", 1)[0].strip())
        )
        if not body:
            return "pool check (empty query)"
        return next((lab for pre, lab in STATEMENTS if body.startswith(pre)), "other")
