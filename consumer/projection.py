"""The projection: journal rows -> snapshots, with a durable checkpoint.

Cursor. The trigger journals (writer's xid8, change id) for each of our rows. A pass reads
every journal row that is not visible in `prev` - a snapshot in which every visible row
is already applied - in (xid, id) order, in chunks. Every row visible now is applied now;
a transaction still open elsewhere only holds back the *checkpoint*, never other rows.

Checkpoint. `applied_below` (xid8): every journal row with a smaller xid is applied. After
a pass whose first snapshot was S, it is S's xmin: each xid below it had finished when S
was taken, so its rows were visible to every chunk of the pass. Mid-pass it is the
smaller of that and the xid of the last row read. It commits with the snapshot writes, as
a compare-and-set on `version`: a second worker that raced us fails instead of
overwriting. After a restart, `prev` is "everything below applied_below"; rows between
the checkpoint and the watermark are read again and merge harmlessly: the merge is
order independent (docs/architecture.md#order-independence).

Bootstrap. Rows committed before the trigger existed are not journaled. CREATE TRIGGER
waited for every inserting transaction to end, so each row is either older than the
trigger (found by one scan of the log) or journaled. The scan runs once, before the
journal is followed; rows seen by both merge harmlessly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec
import psycopg

from . import locks, metrics
from .apply import (
    LIVE,
    Applied,
    Targets,
    apply_isolated,
    apply_rows,
    isolating,
    quarantine_from_log,
    unapplicable,
)
from .errors import CheckpointConflict, ConfigError, Deposed
from .model import KIND_BY_TABLE, RawChange
from .sql import load

log = logging.getLogger(__name__)

CHECKPOINT = "projection"
NIL_UUID = "00000000-0000-0000-0000-000000000000"


class Checkpoint(msgspec.Struct):
    applied_below: int
    version: int
    bootstrapped: bool


def below(xid: int) -> str:
    """The pg_snapshot in which exactly the xids below `xid` are visible."""
    return f"{xid}:{xid}:"


def snapshot_xmin(snapshot: str) -> int:
    return int(snapshot.split(":", 1)[0])


async def read_checkpoint(conn: psycopg.AsyncConnection, name: str = CHECKPOINT) -> Checkpoint:
    cur = await conn.execute(load("checkpoint/get"), {"name": name})
    row = await cur.fetchone()
    if row is None:
        raise ConfigError("mana_ai.checkpoint has no projection row: run `consumer migrate`")
    return Checkpoint(int(row[0]), row[1], row[2])


CONFLICT_SQLSTATE = "MA001"  # raised by mana_ai.advance_checkpoint
DEPOSED_SQLSTATE = "MA002"  # the same, when a newer leader epoch was taken


def _conflict(name: str, version: int) -> CheckpointConflict:
    return CheckpointConflict(
        f"checkpoint {name!r} moved under us (expected version {version}): "
        "another consumer is applying the same log; stopping this one"
    )


async def advance_checkpoint(
    conn: psycopg.AsyncConnection,
    cp: Checkpoint,
    applied_below: int,
    *,
    bootstrapped: bool = False,
    name: str = CHECKPOINT,
    epoch: int | None = None,
) -> None:
    """Compare-and-set inside the caller's transaction. In pipeline mode a conflict shows
    at the caller's COMMIT (see `conflicts`); `cp` is updated by `committed` after it.
    `epoch`: the leader epoch this process holds; the move is refused once it is stale."""
    with conflicts(cp, name):
        await conn.execute(
            load("checkpoint/cas"),
            {
                "name": name,
                "applied_below": str(applied_below),
                "bootstrapped": bootstrapped,
                "version": cp.version,
                "epoch": epoch,
            },
        )


@contextmanager
def conflicts(cp: Checkpoint, name: str = CHECKPOINT) -> Iterator[None]:
    """Turns the CAS function's conflict errors into CheckpointConflict or Deposed."""
    try:
        yield
    except psycopg.Error as exc:
        if exc.sqlstate == CONFLICT_SQLSTATE:
            raise _conflict(name, cp.version) from None
        if exc.sqlstate == DEPOSED_SQLSTATE:
            raise Deposed(exc.diag.message_primary or "a newer leader took over") from None
        raise


def committed(cp: Checkpoint, applied_below: int, *, bootstrapped: bool = False) -> None:
    """After the transaction holding the CAS committed: the function bumped version by 1."""
    cp.version += 1
    cp.applied_below = max(cp.applied_below, applied_below)
    cp.bootstrapped = cp.bootstrapped or bootstrapped


class JournalChunk(msgspec.Struct):
    """One read of journal/read.sql: the statement's snapshot, whether row level security
    applies to this role on the log, and the rows. Each row: (xid, change_id, missing,
    user_id, table_name, record_id, op, data, field_meta, created_at, stored clocks,
    created_at text)."""

    snapshot: str
    rls: bool
    rows: list[tuple]


async def read_journal(
    conn: psycopg.AsyncConnection, prev: str, after: tuple[str, str], limit: int
) -> JournalChunk:
    """One chunk of journal rows not visible in `prev`, after the keyset position `after`."""
    cur = await conn.execute(
        load("journal/read"),
        {"prev": prev, "after_xid": after[0], "after_id": after[1], "limit": limit},
    )
    result = await cur.fetchall()
    return JournalChunk(
        str(result[0][0]), bool(result[0][1]), [r[2:] for r in result if r[2] is not None]
    )


async def read_journal_row(
    conn: psycopg.AsyncConnection, xid: str, change_id: str
) -> JournalChunk:
    """One journal row by its exact key, in the shape of `read_journal`."""
    cur = await conn.execute(load("journal/one"), {"xid": xid, "change_id": change_id})
    result = await cur.fetchall()
    return JournalChunk(
        str(result[0][0]), bool(result[0][1]), [r[2:] for r in result if r[2] is not None]
    )


def missing_rows(chunk: JournalChunk, who: str = "the consumer") -> list[tuple[str, str]]:
    """(change id, xid) of the journal rows whose log row we cannot see. With row level
    security active for our role they may be hidden, not gone: a configuration error,
    never skipped. Without it they are gone (inserted and deleted in one transaction,
    purged): the caller notes them and goes on."""
    missing = [(r[1], r[0]) for r in chunk.rows if r[2]]
    if missing and chunk.rls:
        raise ConfigError(
            f"{len(missing)} journaled rows of public.sync_changes are hidden by row level "
            f"security: {who}'s role needs BYPASSRLS (ALTER ROLE ... BYPASSRLS)"
        )
    return missing


def journal_raws(chunk: JournalChunk) -> list[RawChange]:
    """The rows of a chunk that have their log row, as RawChange."""
    return [journal_raw(r) for r in chunk.rows if not r[2]]


def journal_raw(row: tuple) -> RawChange:
    return RawChange(
        id=row[1],
        user_id=row[3],
        table_name=row[4],
        record_id=row[5],
        op=row[6],
        data=row[7],
        field_meta=row[8],
        created_at=row[9],
        created_at_text=row[11],
    )


async def refuse_hidden_rows(conn: psycopg.AsyncConnection, what: str) -> None:
    """Raise ConfigError (one line, naming the privilege) when row level security could
    hide rows of the log from this role: a scan would then miss them and still finish."""
    cur = await conn.execute(load("journal/rls_active"))
    row = await cur.fetchone()
    if row is not None and row[0]:
        raise ConfigError(
            f"{what}: rows of public.sync_changes may be hidden by row level security from "
            f"role {row[1]!r}, which lacks BYPASSRLS (ALTER ROLE {row[1]} BYPASSRLS); "
            "nothing was marked done"
        )


def _states(rows: list[tuple]) -> dict[tuple[str, str, str], bytes | None]:
    """The stored clocks that came with the journal read, by record."""
    return {(KIND_BY_TABLE[r[4]], r[3], r[5]): r[10] for r in rows if r[4] in KIND_BY_TABLE}


class Prelude(msgspec.Struct, frozen=True):
    """A statement a pass runs before its first read (see Projector.catch_up); `fallback`
    replaces it when the first chunk must be redone row by row and whether `query` took
    effect is unknown (the failed transaction may have run it)."""

    query: str
    fallback: str
    params: dict[str, object] = {}


class Projector:
    """Applies the journal to the snapshots; one per process, on its own work connection."""

    def __init__(
        self,
        *,
        batch_size: int = 2000,
        max_row_bytes: int = 1_000_000,
        on_applied: Callable[[Applied], None] | None = None,
        targets: Targets = LIVE,
    ) -> None:
        self.batch_size = batch_size
        self.max_row_bytes = max_row_bytes
        self.on_applied = on_applied
        self.targets = targets
        self.cp: Checkpoint | None = None
        # The leader epoch every checkpoint move is fenced with (None: unfenced, for tools).
        self.epoch: int | None = None
        # Called after every committed chunk: the listener's stall deadline moves on.
        self.on_progress: Callable[[], None] | None = None
        self.prev: str | None = None  # snapshot up to which everything is applied
        self.pending_since: float | None = None  # monotonic time of the oldest unanswered ring
        # Since when an open transaction has held the checkpoint below the newest xid
        # (None: nothing was in progress at the end of the last pass).
        self.held_since: float | None = None
        self._held_xmin = ""
        self.last_read = 0  # journal rows the last pass read (0: it found the journal empty)
        # A pass that reads nothing moves the checkpoint only when the last move is this
        # many seconds old (0: always). Such a move writes no snapshot; the follower spaces
        # them out, tools and tests keep every move.
        self.quiet_checkpoint_every = 0.0
        self._moved_at = 0.0
        # The answer of the last pass's prelude (see catch_up), None when it had none.
        self.prelude_answer: object = None

    def ring(self) -> None:
        """A doorbell rang: remember since when work may be waiting (apply lag)."""
        if self.pending_since is None:
            self.pending_since = time.monotonic()

    def lag_seconds(self) -> float:
        return 0.0 if self.pending_since is None else time.monotonic() - self.pending_since

    def checkpoint_age(self) -> float:
        return 0.0 if self.held_since is None else time.monotonic() - self.held_since

    def forget(self) -> None:
        """After a lost connection: trust only what the database says."""
        self.cp = None
        self.prev = None

    async def _start(self, conn: psycopg.AsyncConnection) -> Checkpoint:
        if self.cp is None:
            async with conn.transaction():
                self.cp = await read_checkpoint(conn)
            self.prev = below(self.cp.applied_below)
        return self.cp

    async def bootstrap(self, conn: psycopg.AsyncConnection) -> int:
        """Fold the rows that predate the trigger; once per database. Returns rows read."""
        cp = await self._start(conn)
        if cp.bootstrapped:
            return 0
        log.info("bootstrap: folding the log rows that predate the journal trigger")
        total = 0
        done = Applied()
        started = time.monotonic()
        async with conn.transaction():
            # One transaction: a crash leaves bootstrapped=false and the scan runs again.
            # A role that row level security filters would read only some rows and still
            # finish: refuse before reading, so `bootstrapped` stays false.
            await refuse_hidden_rows(conn, "bootstrap")
            async with conn.cursor(name="mana_ai_bootstrap") as cur:
                await cur.execute(load("journal/log_read"))
                while rows := await cur.fetchmany(self.batch_size):
                    applied = await apply_isolated(
                        conn,
                        [RawChange(*r) for r in rows],  # log_read's columns in field order
                        max_bytes=self.max_row_bytes,
                        targets=self.targets,
                    )
                    done.merge(applied)
                    total += len(rows)
                    if self.on_progress is not None:
                        self.on_progress()
            await advance_checkpoint(
                conn, cp, cp.applied_below, bootstrapped=True, epoch=self.epoch
            )
        committed(cp, cp.applied_below, bootstrapped=True)
        self._account(done)  # only now: the scheduler must not read before the commit
        log.info("bootstrap: %d rows folded in %.2f s", total, time.monotonic() - started)
        return total

    async def catch_up(
        self, conn: psycopg.AsyncConnection, prelude: Prelude | None = None
    ) -> Applied:
        """One pass: apply every row committed and not yet applied. Returns what changed.

        `prelude`: one statement run first, in the first read's round trip and before its
        snapshot is taken (the doorbell's arm or disarm); its one value is left in
        `prelude_answer`. When the first chunk has to be redone row by row, the prelude
        runs again there with its `fallback` statement instead."""
        cp = await self._start(conn)
        assert self.prev is not None
        self.ring()
        self.prelude_answer = None
        total = Applied()
        pass_snapshot: str | None = None
        after_xid, after_id = "0", NIL_UUID
        read = 0
        while True:
            started = time.perf_counter()
            try:
                chunk, applied, moved, new_below = await self._chunk(
                    conn, cp, (after_xid, after_id), pass_snapshot, prelude
                )
            except Exception as exc:
                if not isolating(exc):
                    raise
                # Something in this chunk defeats reading or applying it as a whole (a
                # value the driver cannot load, one the server rejects): go through it row
                # by row; a row that fails alone is quarantined, the others apply.
                log.warning("a journal chunk failed (%s); applying it row by row", exc)
                if prelude is not None:
                    # Whether the failed transaction's prelude ran is unknown: settle it.
                    await self._prelude(conn, prelude.fallback, prelude.params)
                chunk, applied, moved, new_below = await self._chunk_by_row(
                    conn, cp, (after_xid, after_id), pass_snapshot
                )
            prelude = None
            read += len(chunk.rows)
            pass_snapshot = pass_snapshot or chunk.snapshot
            if moved:
                committed(cp, new_below)
                self._moved_at = time.monotonic()
            if self.on_progress is not None:
                self.on_progress()
            rows = chunk.rows
            if rows:  # a quiet pass updates no metric
                await applied.settle()
                metrics.APPLY_BATCH.observe(time.perf_counter() - started)
                self._account(applied)
                total.merge(applied)
            if len(rows) < self.batch_size:
                break
            after_xid, after_id = rows[-1][0], rows[-1][1]
        assert pass_snapshot is not None
        self.prev = pass_snapshot
        self.pending_since = None
        self.last_read = read
        self._track_hold(pass_snapshot)
        if total.rows or total.quarantined:
            log.debug(
                "applied %d rows (%d new, %d updated, %d quarantined)",
                total.rows,
                total.new,
                total.updated,
                total.quarantined,
            )
        return total

    def _below(self, cp: Checkpoint, chunk: JournalChunk, pass_snapshot: str) -> tuple[bool, int]:
        """Whether the checkpoint moves after this chunk, and to where."""
        rows = chunk.rows
        full = len(rows) == self.batch_size
        watermark = snapshot_xmin(pass_snapshot)
        new_below = min(int(rows[-1][0]), watermark) if full else watermark
        if rows:
            return True, new_below
        due = time.monotonic() - self._moved_at >= self.quiet_checkpoint_every
        return new_below > cp.applied_below and due, new_below

    async def _prelude(
        self, conn: psycopg.AsyncConnection, query: str, params: dict[str, object]
    ) -> None:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        self.prelude_answer = row[0] if row else None

    async def _chunk(
        self,
        conn: psycopg.AsyncConnection,
        cp: Checkpoint,
        after: tuple[str, str],
        pass_snapshot: str | None,
        prelude: Prelude | None = None,
    ) -> tuple[JournalChunk, Applied, bool, int]:
        """Read, apply and checkpoint one chunk in one transaction, two round trips:
        BEGIN (+ prelude) + read, then writes + CAS + COMMIT (pipeline)."""
        assert self.prev is not None
        with conflicts(cp):
            async with conn.pipeline(), conn.transaction():
                # In the same round trip as the read, and finished before the read's
                # snapshot is taken (statements of a READ COMMITTED transaction each take
                # their own).
                pre = await conn.execute(prelude.query, prelude.params) if prelude else None
                chunk = await read_journal(conn, self.prev, after, self.batch_size)
                if pre is not None:
                    row = await pre.fetchone()
                    self.prelude_answer = row[0] if row else None
                missing = missing_rows(chunk)
                applied = await apply_rows(
                    conn,
                    journal_raws(chunk),
                    max_bytes=self.max_row_bytes,
                    targets=self.targets,
                    states=_states(chunk.rows) if self.targets == LIVE else None,
                    defer_counts=True,
                    missing=missing,
                )
                moved, new_below = self._below(cp, chunk, pass_snapshot or chunk.snapshot)
                if moved:
                    await advance_checkpoint(conn, cp, new_below, epoch=self.epoch)
        return chunk, applied, moved, new_below

    async def _chunk_by_row(
        self,
        conn: psycopg.AsyncConnection,
        cp: Checkpoint,
        after: tuple[str, str],
        pass_snapshot: str | None,
    ) -> tuple[JournalChunk, Applied, bool, int]:
        """The same chunk as `_chunk`, one row at a time, each in a savepoint. Its keys
        come from a query that loads nothing but text, so even a row the driver cannot
        load is found; a row that fails alone is quarantined with the error."""
        assert self.prev is not None
        total = Applied()
        with conflicts(cp):
            async with conn.transaction():
                # A snapshot taken before the keys are read is a safe watermark: whatever
                # finished before it is visible to the read.
                cur = await conn.execute("SELECT pg_current_snapshot()::text")
                snapshot_row = await cur.fetchone()
                assert snapshot_row is not None
                cur = await conn.execute(
                    load("journal/keys"),
                    {"prev": self.prev, "after_xid": after[0], "after_id": after[1],
                     "limit": self.batch_size},
                )
                keys = await cur.fetchall()
                for xid, change_id in keys:
                    try:
                        async with conn.transaction():
                            one = await read_journal_row(conn, xid, change_id)
                            total.merge(
                                await apply_rows(
                                    conn,
                                    journal_raws(one),
                                    max_bytes=self.max_row_bytes,
                                    targets=self.targets,
                                    missing=missing_rows(one),
                                )
                            )
                    except Exception as exc:
                        if not isolating(exc):
                            raise
                        async with conn.transaction():
                            if await quarantine_from_log(conn, change_id, unapplicable(exc)):
                                total.quarantined += 1
                chunk = JournalChunk(str(snapshot_row[0]), False, [tuple(k) for k in keys])
                moved, new_below = self._below(cp, chunk, pass_snapshot or chunk.snapshot)
                if moved:
                    await advance_checkpoint(conn, cp, new_below, epoch=self.epoch)
        return chunk, total, moved, new_below

    def _track_hold(self, snapshot: str) -> None:
        xmin, xmax, _ = snapshot.split(":", 2)
        if xmin == xmax:
            self.held_since = None
        elif self.held_since is None or self._held_xmin != xmin:
            self.held_since = time.monotonic()
        self._held_xmin = xmin

    async def prune(self, conn: psycopg.AsyncConnection) -> int:
        """Drop journal rows the checkpoint has passed."""
        if self.cp is None:
            return 0
        cur = await conn.execute(
            load("journal/prune"),
            {"applied_below": str(self.cp.applied_below), "replay_lock": locks.REPLAY},
        )
        return cur.rowcount

    def _account(self, applied: Applied) -> None:
        metrics.SNAPSHOT_ROWS_APPLIED.inc(applied.rows)
        metrics.SNAPSHOTS_NEW.inc(applied.new)
        metrics.SNAPSHOTS_UPDATED.inc(applied.updated)
        if applied.bad_stamps:
            metrics.BAD_STAMPS.inc(applied.bad_stamps)
        if self.on_applied and (applied.missions or applied.agents):
            self.on_applied(applied)
