"""The replay's queries: its lock and hold, the shadow tables, the catalog facts the swap
needs, the live lock and the comparison of --verify. Rows come back as Structs; the
orchestration (replay.py) decides the transactions and never runs SQL itself.

Table names are not parameters: templates get them as psycopg.sql identifiers of the
mana_ai schema; every value is a bound parameter."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.rows import args_row

from . import locks
from .apply import LIVE, Targets, lock_query
from .model import RawChange
from .sql import load

SHADOW = Targets(
    schema=LIVE.schema,
    missions=f"{LIVE.missions}_shadow",
    agents=f"{LIVE.agents}_shadow",
    clocks=f"{LIVE.clocks}_shadow",
    due=f"{LIVE.due}_shadow",
)
# Where the swap moves the live tables; dropped after it commits, outside its lock.
RETIRED = Targets(
    schema=LIVE.schema,
    missions=f"{LIVE.missions}_retired",
    agents=f"{LIVE.agents}_retired",
    clocks=f"{LIVE.clocks}_retired",
    due=f"{LIVE.due}_retired",
)
# (live, shadow, retired) table names, in the order the projector touches them (see
# replay/lock_live.tmpl.sql)
TABLES = tuple(
    (getattr(LIVE, t), getattr(SHADOW, t), getattr(RETIRED, t))
    for t in ("clocks", "due", "missions", "agents")
)

_CURSOR = "mana_ai_replay"


class RowSecurity(msgspec.Struct, frozen=True):
    hidden: bool  # row level security would hide rows of the log from `role`
    role: str


class Blocker(msgspec.Struct, frozen=True):
    """Something a swap by rename would not carry over from a live table (or that would stop
    it): `what` is e.g. 'view public.due', 'trigger t', 'row level security'."""

    table: str
    what: str


class Rename(msgspec.Struct, frozen=True):
    """An index or constraint of the shadow paired with the live one of the same definition.
    A None name: one side has it, the other does not."""

    kind: str  # 'index' | 'constraint'
    shadow_name: str | None
    live_name: str | None


class TableFacts(msgspec.Struct, frozen=True):
    """What the swap of one table needs from the catalog (read in the swap transaction)."""

    live: str
    shadow: str
    retired: str
    carry_over: list[str]  # statements giving the shadow the live owner and grants
    renames: list[Rename]


class Counts(msgspec.Struct, frozen=True):
    missions: int
    agents: int


class DiffRow(msgspec.Struct, frozen=True):
    """One difference between a live table and the shadow. `what`: 'snapshot', 'clock' or
    'due'; `status`: 'differs', 'only-live' or 'only-replay'. `fields` names what differs
    in a snapshot (None for clocks: their states, MessagePack, come instead)."""

    kind: str
    user_id: str
    record_id: str
    what: str
    status: str
    fields: list[str] | None
    live_state: bytes | None
    shadow_state: bytes | None


class Diff(msgspec.Struct, frozen=True):
    differ: int  # records that differ (a record counts once)
    inflight: int  # records left out: the live projection may still be applying them
    rows: list[DiffRow]  # the first differences, in (kind, user, record, what) order


def _template(text: str, **tables: str) -> sql.Composed:
    """A template's text (a *.tmpl.sql file) with {placeholders} filled by mana_ai table
    identifiers."""
    return sql.SQL(text).format(
        **{k: sql.Identifier(LIVE.schema, v) for k, v in tables.items()}
    )


def _four(targets: Targets) -> dict[str, str]:
    return {
        "clocks": targets.clocks,
        "missions": targets.missions,
        "due": targets.due,
        "agents": targets.agents,
    }


async def _one(conn: psycopg.AsyncConnection, query: str | sql.Composed, params: Any = None
               ) -> tuple:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row


# --------------------------------------------------------------------------- lock, preflight


async def row_security(conn: psycopg.AsyncConnection) -> RowSecurity:
    hidden, role = await _one(conn, load("journal/rls_active"))
    return RowSecurity(bool(hidden), role)


async def try_lock(conn: psycopg.AsyncConnection) -> bool:
    """Take the replay's session lock if no other replay holds it."""
    (locked,) = await _one(conn, load("replay/lock"), {"key": locks.REPLAY})
    return bool(locked)


async def wait_lock(conn: psycopg.AsyncConnection) -> None:
    """Wait for the replay's session lock, up to the session's lock_timeout
    (LockNotAvailable then)."""
    await conn.execute(load("replay/lock_wait"), {"key": locks.REPLAY})


async def swap_blockers(conn: psycopg.AsyncConnection) -> list[Blocker]:
    cur = await conn.execute(
        load("replay/guard"), {"tables": [f"{LIVE.schema}.{live}" for live, _, _ in TABLES]}
    )
    return [Blocker(t, w) for t, w in await cur.fetchall()]


# --------------------------------------------------------------------------- settings


async def setting(conn: psycopg.AsyncConnection, name: str) -> str:
    (value,) = await _one(conn, "SELECT current_setting(%s)", (name,))
    return str(value)


async def set_setting(
    conn: psycopg.AsyncConnection, name: str, value: str, *, local: bool
) -> None:
    """`local`: until the end of the current transaction; else for the session."""
    await conn.execute("SELECT set_config(%s, %s, %s)", (name, value, local))


async def set_lock_timeout(
    conn: psycopg.AsyncConnection, seconds: float, *, local: bool
) -> None:
    await set_setting(conn, "lock_timeout", _ms(seconds), local=local)


# --------------------------------------------------------------------------- shadow and hold


async def create_shadow(conn: psycopg.AsyncConnection) -> None:
    for live, shadow, _ in TABLES:
        await conn.execute(_template(load("replay/shadow_create.tmpl"), live=live, shadow=shadow))


async def drop_tables(conn: psycopg.AsyncConnection, *targets: Targets) -> None:
    """Drop the four tables of each of `targets` that exist (a shadow, retired live tables),
    in one statement."""
    tables = [sql.Identifier(t.schema, name) for t in targets for name in _four(t).values()]
    await conn.execute(
        sql.SQL(load("replay/shadow_drop.tmpl")).format(tables=sql.SQL(", ").join(tables))
    )


async def drop_leftovers(conn: psycopg.AsyncConnection) -> None:
    """The shadow tables, and old tables a swap could not drop (one statement)."""
    await drop_tables(conn, SHADOW, RETIRED)


async def analyze(conn: psycopg.AsyncConnection, targets: Targets) -> None:
    await conn.execute(_template(load("replay/analyze.tmpl"), **_four(targets)))


async def set_hold(conn: psycopg.AsyncConnection) -> None:
    """Keep journal rows from this transaction's xmin on (commit it before the build
    snapshot is taken)."""
    await conn.execute(load("replay/hold_set"))


async def clear_hold(conn: psycopg.AsyncConnection) -> None:
    await conn.execute(load("replay/hold_clear"))


async def clear_merge_rule_note(conn: psycopg.AsyncConnection) -> None:
    """Every state is rebuilt under the current merge rule: the upgrade note goes."""
    await conn.execute(load("snapshots/merge_rule_clear"))


# --------------------------------------------------------------------------- the log


async def begin_log_read(conn: psycopg.AsyncConnection) -> str:
    """Start the build's read-only, repeatable-read transaction on `conn` (not in
    autocommit) and return its snapshot, which the cursor of `log_cursor` reads in."""
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    # The first statement fixes the transaction's snapshot: the cursor's.
    (snapshot,) = await _one(conn, "SELECT pg_current_snapshot()::text")
    return str(snapshot)


async def log_rows(conn: psycopg.AsyncConnection) -> int:
    """An estimate of the rows to fold (for progress)."""
    (total,) = await _one(conn, load("replay/count"))
    return int(total)


async def log_cursor(conn: psycopg.AsyncConnection) -> psycopg.AsyncServerCursor[RawChange]:
    """A server-side cursor over the whole log of our tables, grouped by record."""
    cur = conn.cursor(name=_CURSOR, row_factory=args_row(RawChange))
    await cur.execute(load("journal/log_read"))
    return cur


# --------------------------------------------------------------------------- the swap


async def lock_live(conn: psycopg.AsyncConnection, mode: str, wait: float) -> None:
    """LOCK the live tables in `mode` inside the caller's transaction, waiting at most
    `wait` seconds in all (LockNotAvailable then)."""
    async with waiting_at_most(conn, wait):
        await conn.execute(lock_query(LIVE, mode))


@asynccontextmanager
async def waiting_at_most(conn: psycopg.AsyncConnection, seconds: float) -> AsyncIterator[None]:
    """Inside the caller's transaction: the block's statement (one LOCK or DROP of several
    tables) waits at most `seconds` for its locks in all, and LockNotAvailable is raised
    past that (a cancel that came sooner is an operator's, raised as it is). lock_timeout
    alone bounds each table's wait on its own: four tables busy one after the other would
    hold those already locked (and every session queued behind them) four times as long.
    The statement timeout bounds the four together; it is set for the block alone.
    lock_timeout stays set to the end of the transaction, as before."""
    cur = await conn.execute("SELECT current_setting('statement_timeout')")
    row = await cur.fetchone()
    assert row is not None
    await set_lock_timeout(conn, seconds, local=True)
    await set_setting(conn, "statement_timeout", _ms(seconds), local=True)
    started = time.monotonic()
    try:
        yield
    except pgerr.QueryCanceled as exc:
        if time.monotonic() - started < seconds:
            raise  # not our timeout: an operator cancelled the statement
        raise pgerr.LockNotAvailable(
            f"the tables were not all locked within {seconds:g} s ({exc})"
        ) from exc
    await set_setting(conn, "statement_timeout", row[0], local=True)


def _ms(seconds: float) -> str:
    """A timeout setting; at least 1 ms, since 0 would turn the timeout off."""
    return f"{max(1, int(seconds * 1000))}ms"


async def table_facts(conn: psycopg.AsyncConnection) -> list[TableFacts]:
    """Owner, grants, index and constraint names of every live table and its shadow."""
    facts = []
    for live, shadow, retired in TABLES:
        names = {
            "live": sql.Identifier(LIVE.schema, live).as_string(conn),
            "shadow": sql.Identifier(LIVE.schema, shadow).as_string(conn),
        }
        cur = await conn.execute(load("replay/carry_over"), names)
        carry = [stmt for (stmt,) in await cur.fetchall()]
        cur = await conn.execute(load("replay/renames"), names)
        renames = [Rename(k, s, n) for k, s, n in await cur.fetchall()]
        facts.append(TableFacts(live, shadow, retired, carry, renames))
    return facts


async def run_statements(
    conn: psycopg.AsyncConnection, statements: list[sql.SQL | sql.Composed]
) -> None:
    for statement in statements:
        await conn.execute(statement)


async def counts(conn: psycopg.AsyncConnection, targets: Targets = LIVE) -> Counts:
    query = _template(
        load("replay/counts.tmpl"), missions=targets.missions, agents=targets.agents
    )
    missions, agents = await _one(conn, query)
    return Counts(int(missions), int(agents))


# --------------------------------------------------------------------------- verify


async def applied_below(conn: psycopg.AsyncConnection) -> str:
    """The live projection's checkpoint ('0' when there is none yet)."""
    cur = await conn.execute(load("checkpoint/get"), {"name": "projection"})
    row = await cur.fetchone()
    return str(row[0]) if row else "0"


async def diff(conn: psycopg.AsyncConnection, below: str, limit: int) -> Diff:
    """Compare the live tables with the shadow, inside the caller's transaction (the
    differences go to a temporary table dropped at its commit). Records with journal rows
    at or above `below` are counted apart, not compared."""
    await conn.execute(
        _template(
            load("replay/diff.tmpl"),
            **{f"live_{k}": v for k, v in _four(LIVE).items()},
            **{f"shadow_{k}": v for k, v in _four(SHADOW).items()},
        ),
        {"applied_below": below},
    )
    differ, inflight = await _one(conn, load("replay/diff_summary"))
    cur = await conn.execute(load("replay/diff_detail"), {"limit": limit})
    rows = [
        DiffRow(kind, user_id, record_id, what, status, fields,
                bytes(live) if live is not None else None,
                bytes(shadow) if shadow is not None else None)
        for kind, user_id, record_id, what, status, fields, live, shadow
        in await cur.fetchall()
    ]
    return Diff(int(differ), int(inflight), rows)
