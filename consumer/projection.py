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

from . import journal, locks, metrics
from .apply import (
    LIVE,
    Applied,
    CollectorPause,
    Finish,
    Hot,
    Targets,
    Window,
    apply_isolated,
    apply_rows,
    isolating,
    quarantine_from_log,
    unapplicable,
)
from .errors import CheckpointConflict, ConfigError, Deposed
from .journal import NIL_UUID, JournalRow, journal_raws, missing_rows
from .model import KIND_BY_TABLE
from .sql import load
from .txn import one_statement

log = logging.getLogger(__name__)

CHECKPOINT = "projection"

# Journal rows per read of a catch-up window. A read that small (about 150-300 KB) fits the
# socket's buffer, so the server reads the next one whole while we fold this one; reads of
# 2,000 rows (1.5-2.5 MB) stalled the server halfway, and we waited for the rest:
# 22.6-24.1k against 28-33k rows/s over 20k records, 9.2-10.0k against 10.9-11.6k over
# 200k (bench catchup's shapes, side by side). (apply.WINDOW_PART is the same for writes.)
WINDOW_READ = 250


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


async def refuse_hidden_rows(conn: psycopg.AsyncConnection, what: str) -> None:
    """Raise ConfigError (one line, naming the privilege) when row level security could
    hide rows of the log from this role: a scan would then miss them and still finish."""
    role = await journal.hidden_role(conn)
    if role is not None:
        raise ConfigError(
            f"{what}: rows of public.sync_changes may be hidden by row level security from "
            f"role {role!r}, which lacks BYPASSRLS (ALTER ROLE {role} BYPASSRLS); "
            "nothing was marked done"
        )


def _states(rows: list[JournalRow]) -> dict[tuple[str, str, str], bytes | None]:
    """The stored clocks that came with the journal read, by record."""
    return {
        (KIND_BY_TABLE[r.table_name], r.user_id, r.record_id): r.state  # type: ignore[misc]
        for r in rows
        if r.table_name in KIND_BY_TABLE
    }


class Step(msgspec.Struct):
    """What one chunk or window of a pass read and did."""

    snapshot: str  # the snapshot of its first read
    rows: int  # journal rows read
    last: tuple[str, str] | None  # keyset position of the last row read
    full: bool  # its last read came back full: more rows may follow
    applied: Applied
    moved: bool  # the checkpoint moved (to new_below)
    new_below: int
    armed_tried: bool = False  # its last statement armed the doorbell (or it was armed)


class Projector:
    """Applies the journal to the snapshots; one per process, on its own work connection.

    A pass reads the journal in chunks of `batch_size` rows, each chunk read, applied and
    checkpointed in one transaction. When the first chunk of a pass comes back full (a
    backlog), the rest of the pass goes by windows instead: up to `window_rows` rows over
    up to about `window_records` records, read `WINDOW_READ` rows at a time in one
    transaction (the next read runs while the current one is folded), folded by record,
    each record's clocks and snapshot written once, then the checkpoint moved, as a chunk
    does."""

    def __init__(
        self,
        *,
        batch_size: int = 2000,
        max_row_bytes: int = 1_000_000,
        on_applied: Callable[[Applied], None] | None = None,
        targets: Targets = LIVE,
        window_rows: int = 1_000_000,
        window_records: int = 20_000,
        window_seconds: float = 30.0,
    ) -> None:
        self.batch_size = batch_size
        self.max_row_bytes = max_row_bytes
        self.on_applied = on_applied
        self.targets = targets
        # Windows (0 rows: never): the more rows of a record one window folds, the fewer
        # times the record is written. Memory is about 2 KB per record of a window, twice
        # over while a window's states serve the next one; a window commits at least
        # every window_seconds, so a crash redoes little.
        self.window_rows = window_rows
        self.window_records = window_records
        self.window_seconds = window_seconds
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
        # The work connection holds the doorbell's lock: writers of ours ring at commit (see
        # schema/migrations/0010_armed_doorbell.sql and catch_up's `release` and `arm`).
        self.armed = False
        self._hot: Hot = {}  # the last window's states (see Window); only within a pass
        self._window_read = 0  # rows the current (or last) window has read so far
        # The chunk path's two statements run on cursors kept for the work connection: a
        # new cursor per statement (its transformer and adapters) cost about a fifth of the
        # client CPU of a lone row's statement.
        self._cursors: dict[bool, psycopg.AsyncCursor] = {}
        self._collector = CollectorPause()  # held by windows, released when the pass ends

    def _cursor(self, conn: psycopg.AsyncConnection, *, binary: bool) -> psycopg.AsyncCursor:
        """This connection's kept cursor for one result format (statements whose answers
        are read before the next statement: not the pipelined ones of a window)."""
        cur = self._cursors.get(binary)
        if cur is None or cur.connection is not conn or cur.closed:
            cur = self._cursors[binary] = conn.cursor(binary=binary)
        return cur

    def ring(self) -> None:
        """A doorbell rang: remember since when work may be waiting (apply lag)."""
        if self.pending_since is None:
            self.pending_since = time.monotonic()

    def stand_by(self) -> None:
        """This process applies nothing now (a standby): no ring waits on it. A pass cut
        off by a deposition or a lost connection left its ring unanswered; a standby must
        not report that as apply lag, which only grows while it stands by."""
        self.pending_since = None

    def lag_seconds(self) -> float:
        return 0.0 if self.pending_since is None else time.monotonic() - self.pending_since

    def checkpoint_age(self) -> float:
        return 0.0 if self.held_since is None else time.monotonic() - self.held_since

    def forget(self) -> None:
        """After a lost connection: trust only what the database says."""
        self.cp = None
        self.prev = None
        self._hot = {}
        self._cursors = {}
        self.armed = False  # a session's advisory locks end with it

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
            async for raws in journal.log_rows(conn, self.batch_size):
                applied = await apply_isolated(
                    conn, raws, max_bytes=self.max_row_bytes, targets=self.targets
                )
                done.merge(applied)
                total += len(raws)
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
        self,
        conn: psycopg.AsyncConnection,
        *,
        release: bool = False,
        arm: bool = False,
        idle_only: bool = False,
    ) -> Applied:
        """One pass: apply every row committed and not yet applied. Returns what changed.

        The doorbell (`armed`): `release`, the first read lets it go if it finds rows (the
        consumer is busy: writers stop ringing); `arm`, the pass leaves it armed, taken by
        the statement that writes its last chunk (or by the pass's last statement). Rows
        committed after the last read and before the arming did not ring: the caller reads
        once more before it parks (armed and that read empty). `armed` stays false while a
        writer of ours is committing (it holds the lock shared). `idle_only`: arm only if
        the pass read nothing."""
        cp = await self._start(conn)
        assert self.prev is not None
        self.ring()
        total = Applied()
        read = 0
        pass_snapshot: str | None = None
        after = ("0", NIL_UUID)
        windows = False  # a backlog: go on by windows
        by_chunk = 0  # rows still to go chunk by chunk after a window failed
        try:
            while True:
                started = time.perf_counter()
                step: Step | None = None
                if windows:
                    try:
                        step = await self._window(conn, cp, after, pass_snapshot)
                    except Exception as exc:
                        self._hot = {}  # its states were folded into: never reuse them
                        self._collector.release()
                        if not isolating(exc):
                            raise
                        # Something in this window defeats folding it as a whole: the rows
                        # it held go chunk by chunk (and row by row where a chunk fails).
                        log.warning("a catch-up window failed (%s); going on by chunks", exc)
                        windows = False
                        by_chunk = self._window_read + self.batch_size
                if step is None:
                    arming = arm and not (idle_only and read)
                    step = await self._chunk_or_rows(
                        conn, cp, after, pass_snapshot, release, arming, idle_only
                    )
                    if step.full and self.armed:
                        await self._disarm(conn)  # a backlog: writers need not ring
                    release = False
                    by_chunk -= step.rows
                    windows = step.full and by_chunk <= 0 and self.window_rows > self.batch_size
                read += step.rows
                pass_snapshot = pass_snapshot or step.snapshot
                if step.moved:
                    committed(cp, step.new_below)
                    self._moved_at = time.monotonic()
                if self.on_progress is not None:
                    self.on_progress()
                if step.rows:  # a quiet pass updates no metric
                    applied = step.applied
                    await applied.settle()
                    metrics.APPLY_BATCH.observe(time.perf_counter() - started)
                    self._account(applied)
                    total.merge(applied)
                if not step.full or step.last is None:
                    break
                after = step.last
            if arm and not step.armed_tried and not (idle_only and read):
                await self._arm(conn)  # the pass ended by a window or row by row
        finally:
            self._hot = {}  # a quiet pass needs none of it: memory back
            self._collector.release()
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

    async def _chunk_or_rows(
        self,
        conn: psycopg.AsyncConnection,
        cp: Checkpoint,
        after: tuple[str, str],
        pass_snapshot: str | None,
        release: bool = False,
        arm: bool = False,
        idle_only: bool = False,
    ) -> Step:
        try:
            return await self._chunk(conn, cp, after, pass_snapshot, release, arm, idle_only)
        except Exception as exc:
            if not isolating(exc):
                raise
            # Something in this chunk defeats reading or applying it as a whole (a value
            # the driver cannot load, one the server rejects): go through it row by row;
            # a row that fails alone is quarantined, the others apply.
            log.warning("a journal chunk failed (%s); applying it row by row", exc)
            if release or arm:
                # Whether the failed statements took or let go the doorbell is unknown.
                await self._disarm(conn)
            return await self._chunk_by_row(conn, cp, after, pass_snapshot)

    def _below(
        self, cp: Checkpoint, last_xid: str | None, full: bool, pass_snapshot: str
    ) -> tuple[bool, int]:
        """Whether the checkpoint moves after a chunk or window, and to where: past every
        xid of the pass's first snapshot, or, when more rows may follow, not past the xid
        of the last row read (its transaction's other rows may come next)."""
        watermark = snapshot_xmin(pass_snapshot)
        new_below = min(int(last_xid), watermark) if full and last_xid else watermark
        if last_xid is not None:
            return True, new_below
        due = time.monotonic() - self._moved_at >= self.quiet_checkpoint_every
        return new_below > cp.applied_below and due, new_below

    async def _disarm(self, conn: psycopg.AsyncConnection) -> None:
        """Disarmed for certain, whatever a failed statement did with the doorbell's lock."""
        await conn.execute(load("journal/doorbell_settle"))
        self.armed = False

    async def _arm(self, conn: psycopg.AsyncConnection) -> None:
        """Arm the doorbell with a statement of its own (a pass that wrote nothing last)."""
        if not self.armed:
            cur = await conn.execute(load("journal/doorbell_arm"), {"key": locks.DOORBELL})
            row = await cur.fetchone()
            self.armed = bool(row and row[0])

    async def _chunk(
        self,
        conn: psycopg.AsyncConnection,
        cp: Checkpoint,
        after: tuple[str, str],
        pass_snapshot: str | None,
        release: bool = False,
        arm: bool = False,
        idle_only: bool = False,
    ) -> Step:
        """Read, apply and checkpoint one chunk: two statements on the autocommit connection,
        the read, then one that writes the snapshots with the checkpoint's compare-and-set
        (an atomic transaction of its own, snapshots/write.tmpl.sql). It also arms the
        doorbell when asked and this is the pass's last chunk."""
        assert self.prev is not None
        async with one_statement(conn):  # (a connection that does not autocommit: one txn)
            chunk = await journal.read(
                conn, self.prev, after, self.batch_size, release,
                self._cursor(conn, binary=True),
            )
            if chunk.released:
                self.armed = False
            missing = missing_rows(chunk)
            rows = chunk.rows
            last = rows[-1].key if rows else None
            full = len(rows) == self.batch_size
            moved, new_below = self._below(
                cp, last and last[0], full, pass_snapshot or chunk.snapshot
            )
            arming = arm and not full and not self.armed and not (idle_only and rows)
            finish = Finish(
                name=CHECKPOINT if moved else None,
                version=cp.version,
                applied_below=new_below,
                epoch=self.epoch,
                arm=arming,
                key=locks.DOORBELL,
            )
            with conflicts(cp):
                applied = await apply_rows(
                    conn,
                    journal_raws(chunk),
                    max_bytes=self.max_row_bytes,
                    targets=self.targets,
                    states=_states(rows) if self.targets == LIVE else None,
                    missing=missing,
                    finish=finish,
                    cursor=self._cursor(conn, binary=False),
                )
            if arming:
                self.armed = bool(applied.armed)
            return Step(
                chunk.snapshot, len(rows), last, full, applied, moved, new_below,
                armed_tried=arming or self.armed,
            )

    async def _window(
        self,
        conn: psycopg.AsyncConnection,
        cp: Checkpoint,
        after: tuple[str, str],
        pass_snapshot: str | None,
    ) -> Step:
        """One window in one transaction (see the class): chunks read back to back in
        pipeline mode, the next one sent before the current one is folded, so the server
        reads while we fold; then (out of pipeline mode: COPY cannot run in it) every
        record written once, the quarantine and the CAS, and COMMIT."""
        assert self.prev is not None
        window = Window(self.max_row_bytes, self._hot)
        self._hot = {}  # folded into from here on; given back only if the window commits
        limit = min(self.batch_size, WINDOW_READ)
        ends = time.monotonic() + self.window_seconds
        snapshot: str | None = None
        rows = self._window_read = 0
        last: tuple[str, str] | None = None
        # No collection for the window, nor between it and the pass's next one: its folds
        # are a growing heap of acyclic JSON trees, and a collector let back in between
        # reads scanned them again each time (847 collections in a 200k-record catch-up at
        # 250 rows a read); let in between windows, it took 0.5-0.66 s of that catch-up,
        # 0.07-0.10 s now.
        self._collector.hold()
        with conflicts(cp):
            async with conn.transaction():
                async with conn.pipeline():
                    pending = await journal.send_read(conn, self.prev, after, limit)
                    while True:
                        chunk = await journal.received(pending)
                        snapshot = snapshot or chunk.snapshot
                        rows += len(chunk.rows)
                        self._window_read = rows
                        full = len(chunk.rows) == limit
                        if chunk.rows:
                            last = chunk.rows[-1].key
                        more = (
                            full
                            and rows < self.window_rows
                            and len(window.folds) <= self.window_records
                            and time.monotonic() < ends
                        )
                        if more:
                            assert last is not None
                            pending = await journal.send_read(conn, self.prev, last, limit)
                        missing_rows(chunk)  # rows hidden from us: stop, as a chunk does
                        window.add(chunk.rows)
                        if self.on_progress is not None:
                            self.on_progress()
                        if not more:
                            break
                hot = await window.write(conn, self.targets)
                moved, new_below = self._below(
                    cp, last and last[0], full, pass_snapshot or snapshot
                )
                if moved:
                    await advance_checkpoint(conn, cp, new_below, epoch=self.epoch)
        self._hot = hot
        assert snapshot is not None
        return Step(snapshot, rows, last, full, window.result, moved, new_below)

    async def _chunk_by_row(
        self,
        conn: psycopg.AsyncConnection,
        cp: Checkpoint,
        after: tuple[str, str],
        pass_snapshot: str | None,
    ) -> Step:
        """The same chunk as `_chunk`, one row at a time, each in a savepoint. Its keys
        come from a query that loads nothing but text, so even a row the driver cannot
        load is found; a row that fails alone is quarantined with the error."""
        assert self.prev is not None
        total = Applied()
        with conflicts(cp):
            async with conn.transaction():
                # A snapshot taken before the keys are read is a safe watermark: whatever
                # finished before it is visible to the read.
                snapshot = await journal.current_snapshot(conn)
                keys = await journal.keys(conn, self.prev, after, self.batch_size)
                for xid, change_id in keys:
                    try:
                        async with conn.transaction():
                            one = await journal.read_one(conn, xid, change_id)
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
                last = keys[-1] if keys else None
                full = len(keys) == self.batch_size
                moved, new_below = self._below(
                    cp, last and last[0], full, pass_snapshot or snapshot
                )
                if moved:
                    await advance_checkpoint(conn, cp, new_below, epoch=self.epoch)
        return Step(snapshot, len(keys), last, full, total, moved, new_below)

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
        return await journal.prune(conn, self.cp.applied_below)

    def _account(self, applied: Applied) -> None:
        metrics.SNAPSHOT_ROWS_APPLIED.inc(applied.rows)
        metrics.SNAPSHOTS_NEW.inc(applied.new)
        metrics.SNAPSHOTS_UPDATED.inc(applied.updated)
        if applied.bad_stamps:
            metrics.BAD_STAMPS.inc(applied.bad_stamps)
        if self.on_applied and (applied.missions or applied.agents):
            self.on_applied(applied)
