"""The journal query layer: what the projection reads (journal rows with their log rows and
stored clocks, the log scan of the bootstrap) and the checkpoint it moves.

Rows come back as `JournalRow` (named fields); the projection and the replay call these
functions and never execute SQL themselves. See consumer/projection.py for the cursor and
checkpoint rules these queries serve.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec
import psycopg

from . import locks
from .errors import ConfigError
from .model import RawChange
from .sql import load

NIL_UUID = "00000000-0000-0000-0000-000000000000"
MAX_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"
LAST_KEY = (str(2**64 - 1), MAX_UUID)  # no journal key is greater


class JournalRow(msgspec.Struct, gc=False):
    """One journal row (the writer's xid8 and the change id, both as text) with its log row
    and the stored clocks of its record. `missing`: the log row is hidden from us or gone;
    every field from `user_id` on is then None. `created_at` is None outside what a
    datetime holds, `created_at_text` says what it was."""

    xid: str
    change_id: str
    missing: bool
    user_id: str | None
    table_name: str | None
    record_id: str | None
    op: str | None
    data: str | None
    field_meta: str | None
    created_at: datetime | None
    state: bytes | None  # the record's stored clocks (MessagePack), None: none yet
    created_at_text: str | None

    @property
    def key(self) -> tuple[str, str]:
        """The keyset position of this row: (xid, change id)."""
        return (self.xid, self.change_id)

    @property
    def id(self) -> str:
        """The change id, under RawChange's name for it (validate reads either)."""
        return self.change_id

    def raw(self) -> RawChange:
        """The log row, not yet validated (only for a row that is not `missing`)."""
        return RawChange(
            id=self.change_id,
            user_id=self.user_id,  # type: ignore[arg-type]
            table_name=self.table_name,  # type: ignore[arg-type]
            record_id=self.record_id,  # type: ignore[arg-type]
            op=self.op,  # type: ignore[arg-type]
            data=self.data,
            field_meta=self.field_meta,
            created_at=self.created_at,
            created_at_text=self.created_at_text,
        )


class JournalChunk(msgspec.Struct):
    """One read: the statement's snapshot, whether row level security applies to this role
    on the log, whether it let the doorbell go (None: it was not asked to, or found no
    rows), and the rows in (xid, change id) order."""

    snapshot: str
    rls: bool
    released: bool | None
    rows: list[JournalRow]


def _chunk(result: list[tuple]) -> JournalChunk:
    # Each result row: snapshot, rls, released, then the JournalRow's columns in field order
    # (NULL when no journal row matched: the snapshot still comes back).
    first = result[0]
    return JournalChunk(
        str(first[0]),
        bool(first[1]),
        first[2],
        [JournalRow(*r[3:]) for r in result if r[3] is not None],
    )


def _bounds(
    prev: str,
    after: tuple[str, str],
    limit: int,
    upto: tuple[str, str] = LAST_KEY,
    release: bool = False,
) -> dict[str, object]:
    # Every row read has xid >= prev's xmin: say so in the keyset bound too, so that the
    # index scan starts there (given both, btree starts at the row comparison's bound).
    xmin = int(prev.split(":", 1)[0])
    if int(after[0]) < xmin:
        after = (str(xmin - 1), MAX_UUID)
    return {
        "prev": prev,
        "after_xid": after[0],
        "after_id": after[1],
        "upto_xid": upto[0],
        "upto_id": upto[1],
        "limit": limit,
        "release": release,
        "key": locks.DOORBELL,
    }


def _key_before(xid: str, change_id: str) -> tuple[str, str]:
    """The greatest key below (xid, change id): with it as the exclusive lower bound and
    the key itself as the upper one, a read returns that key's row and no other. (uuid
    order is the order of its 128-bit value.)"""
    value = uuid.UUID(change_id).int
    if value:
        return (xid, str(uuid.UUID(int=value - 1)))
    return (str(int(xid) - 1), MAX_UUID)


# Reads come back in binary format: a record's stored clocks (bytea) then arrive as they
# are, not hex-encoded by the server and decoded again here (in a catch-up window every row
# carries its record's clocks), and the timestamps need no text parsing.


async def send_read(
    conn: psycopg.AsyncConnection,
    prev: str,
    after: tuple[str, str],
    limit: int,
    release: bool = False,
    cursor: psycopg.AsyncCursor | None = None,
) -> psycopg.AsyncCursor:
    """Send the read of up to `limit` journal rows not visible in the snapshot `prev`, after
    the keyset position `after`; `received` turns the cursor into a chunk. In pipeline mode
    the server reads while the caller does other work. `release`: let the doorbell go if
    there are rows (see journal/read.sql). `cursor`: a binary cursor of `conn` to run it on
    (a new one when None)."""
    cur = cursor if cursor is not None else conn.cursor(binary=True)
    return await cur.execute(load("journal/read"), _bounds(prev, after, limit, release=release))


async def received(cur: psycopg.AsyncCursor) -> JournalChunk:
    return _chunk(await cur.fetchall())


async def read(
    conn: psycopg.AsyncConnection,
    prev: str,
    after: tuple[str, str],
    limit: int,
    release: bool = False,
    cursor: psycopg.AsyncCursor | None = None,
) -> JournalChunk:
    """One chunk of journal rows not visible in `prev`, after the keyset position `after`."""
    return await received(await send_read(conn, prev, after, limit, release, cursor))


async def read_one(conn: psycopg.AsyncConnection, xid: str, change_id: str) -> JournalChunk:
    """One journal row by its exact key, in the shape of `read` (the same query): the
    row-by-row path reads each key of a failed chunk exactly, so a transaction committing
    meanwhile with a smaller xid cannot take a key's place."""
    key = (xid, change_id)
    prev = f"{xid}:{xid}:"  # every xid below this one visible: this one is read
    cur = await conn.execute(
        load("journal/read"), _bounds(prev, _key_before(xid, change_id), 1, upto=key), binary=True
    )
    return _chunk(await cur.fetchall())


async def keys(
    conn: psycopg.AsyncConnection, prev: str, after: tuple[str, str], limit: int
) -> list[tuple[str, str]]:
    """The keys of the chunk `read` would return, as text only (nothing the driver could
    fail to load)."""
    cur = await conn.execute(load("journal/keys"), _bounds(prev, after, limit))
    return [(xid, change_id) for xid, change_id in await cur.fetchall()]


async def current_snapshot(conn: psycopg.AsyncConnection) -> str:
    cur = await conn.execute(load("journal/snapshot"))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def prune(conn: psycopg.AsyncConnection, applied_below: int) -> int:
    """Drop journal rows the checkpoint has passed (a running replay's hold is kept)."""
    cur = await conn.execute(
        load("journal/prune"),
        {"applied_below": str(applied_below), "replay_lock": locks.REPLAY},
    )
    return cur.rowcount


async def log_rows(conn: psycopg.AsyncConnection, batch: int) -> AsyncIterator[list[RawChange]]:
    """The whole log of our tables, record by record, in lists of up to `batch` rows,
    through a server-side cursor (inside the caller's transaction)."""
    async with conn.cursor(name="mana_ai_bootstrap") as cur:
        await cur.execute(load("journal/log_read"))
        while rows := await cur.fetchmany(batch):
            yield [RawChange(*r) for r in rows]  # log_read's columns in field order


async def hidden_role(conn: psycopg.AsyncConnection) -> str | None:
    """The role's name when row level security could hide rows of the log from it."""
    cur = await conn.execute(load("journal/rls_active"))
    row = await cur.fetchone()
    return str(row[1]) if row is not None and row[0] else None


def missing_rows(chunk: JournalChunk, who: str = "the consumer") -> list[tuple[str, str]]:
    """(change id, xid) of the journal rows whose log row we cannot see. With row level
    security active for our role they may be hidden, not gone: a configuration error,
    never skipped. Without it they are gone (inserted and deleted in one transaction,
    purged): the caller notes them and goes on."""
    missing = [(r.change_id, r.xid) for r in chunk.rows if r.missing]
    if missing and chunk.rls:
        raise ConfigError(
            f"{len(missing)} journaled rows of public.sync_changes are hidden by row level "
            f"security: {who}'s role needs BYPASSRLS (ALTER ROLE ... BYPASSRLS)"
        )
    return missing


def journal_raws(chunk: JournalChunk) -> list[RawChange]:
    """The rows of a chunk that have their log row, as RawChange."""
    return [r.raw() for r in chunk.rows if not r.missing]
