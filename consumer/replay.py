"""Replay: rebuild every snapshot from the whole log beside the live tables, then swap.

Build. The log is read in ONE repeatable-read, read-only transaction (snapshot S, noted
with pg_current_snapshot()), through a server-side cursor over mana-sync's
(table_name, record_id, created_at) index, so rows arrive grouped by record. Rows are
cut into batches at record boundaries and written with `apply_rows` into shadow tables
(`SHADOW`: LIKE ... INCLUDING ALL copies of the live tables), one short transaction per
batch on a second connection. Memory is one batch (plus a prefetched one) whatever the
log size; the reader holds no transaction id, so it never holds back the live
projector's checkpoint.

Hold. Before S is taken, a row in mana_ai.replay_hold says "keep journal rows with
xid >= keep_from" (keep_from <= S's xmin). Pruning that respects it
(journal/prune.sql) cannot delete a row the swap still needs. The hold counts only
while the replay session (holding the replay advisory lock) lives.

Catch-up and swap. Every journal row not visible in S committed after S was read: it is
applied to the shadow (duplicates merge harmlessly: the merge is order independent,
docs/architecture.md#order-independence), first without locks,
then in the swap transaction, which LOCKs the live tables ACCESS EXCLUSIVE (the live
projector's and the scheduler's transactions wait; nobody sees a half-built table),
applies what committed since, renames the live tables (and their indexes) aside to
*_retired and the shadow tables, their indexes and constraints to the live names; the
old tables are dropped after the commit, so unlinking their files does not happen under
the lock. A statement that was waiting for the lock, or prepared by name, resolves the
name again and finds the new table. Everything the live tables held was applied
by transactions committed before the lock, from rows committed before them: the shadow
holds all of it, so the checkpoint row stays true untouched. A lock that does not come
within `lock_timeout` (a long reader queued before us) is given up, so the live
projector is never stuck behind us for long; we catch up and try again. The bound holds
for the four tables together (the LOCK's statement timeout; lock_timeout alone bounds
each table's wait on its own, so four tables busy one after the other would hold the
first ones four times as long).

Verify. The same build and catch-up under a SHARE lock (readers go on, the projector
waits), then the shadow is compared with the live tables and dropped. Records with
journal rows at or above the live checkpoint are left out: the live projection may not
have applied those rows yet.

Interruption. The live tables change only in the swap transaction. Ctrl-C, SIGTERM or an
exception drops the shadow tables and the hold on the way out; a replay killed outright
leaves them, and the next replay drops them before it starts. SIGTERM stops the replay
at its next batch boundary (a statement that hangs is cancelled after shutdown.GRACE).

Layout. The queries are in replay_store.py (rows as Structs); this module orchestrates.
swap_statements (the swap, from catalog facts) and differences_report (what --verify
prints) are pure; progress.py draws the progress.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TextIO, TypeVar

import anyio
import psycopg
from anyio.streams.memory import MemoryObjectReceiveStream
from psycopg import errors as pgerr
from psycopg import sql

from . import eventloop, shutdown
from . import replay_store as store
from .apply import LIVE, apply_by_row, apply_rows
from .config import first_line
from .db import TOOL_BOUNDS, aconnect
from .errors import ConfigError
from .journal import NIL_UUID, JournalChunk, journal_raws, missing_rows
from .journal import read as read_journal
from .merge import decode_state
from .model import RawChange
from .progress import Progress, ProgressFn, ProgressPrinter
from .replay_store import RETIRED, SHADOW, Counts, Diff, TableFacts
from .txn import whole_or_by_row

log = logging.getLogger(__name__)

T = TypeVar("T")

# Progress and its printer moved to progress.py; SHADOW and RETIRED to replay_store.py.
__all__ = [
    "EXIT_DIFFERS", "EXIT_OK", "EXIT_REFUSED", "EXIT_TERMINATED", "RETIRED", "SHADOW",
    "Progress", "ProgressFn", "ProgressPrinter", "ReplayError", "clock_differences",
    "differences_report", "replay", "run_replay", "swap_statements",
]

EXIT_OK = 0
EXIT_DIFFERS = 1  # --verify found differences, or the swap could not be done
EXIT_REFUSED = 2  # cannot run here: row level security, another replay, privileges
EXIT_TERMINATED = 143

_SWAP_ATTEMPTS = 5
_DETAIL_LIMIT = 10
_CLEANUP_S = 30  # at most this long for dropping the shadow on the way out of a failure


class ReplayError(Exception):
    """The replay cannot finish; the live tables are untouched. One line for the operator."""


# --------------------------------------------------------------------------- entry points


def run_replay(
    dsn: str,
    *,
    verify: bool = False,
    batch_size: int = 5000,
    progress: ProgressFn | None = None,
    max_row_bytes: int = 1_000_000,
    lock_timeout: float = 5.0,
    out: TextIO | None = None,
) -> int:
    """`consumer replay [--verify]`. Returns the exit code: 0 swapped (or, with `verify`,
    equal); 1 `verify` found differences, or the swap could not be done (the live tables
    are untouched); 2 refused (row level security, another replay running, privileges,
    what the swap cannot carry over); 143 terminated by SIGTERM. Ctrl-C raises
    KeyboardInterrupt, an exception from `progress` propagates; either way the shadow is
    dropped first. `progress` gets a `Progress` per batch (default: `ProgressPrinter`)."""
    job = partial(
        replay,
        dsn,
        verify=verify,
        batch_size=batch_size,
        progress=progress,
        max_row_bytes=max_row_bytes,
        lock_timeout=lock_timeout,
        out=out,
    )
    code = eventloop.run(_until_sigterm, job)
    if code is None:
        print("replay: terminated; the live snapshots are untouched", file=sys.stderr)
        return EXIT_TERMINATED
    return code


class Terminated(BaseException):
    """SIGTERM asked the replay to stop (a BaseException: no handler of errors retries it)."""


async def _until_sigterm(job: Callable[..., Awaitable[int]]) -> int | None:
    """`job(stop=event)`'s result; None when SIGTERM stopped it. The job stops at its next
    batch boundary once `stop` is set: cancelling it mid-statement instead would cancel
    psycopg's own cancellation of that statement too (anyio cancels every await in a
    cancelled scope), which closes the connection with a warning. A job that does not
    stop within shutdown.GRACE is cancelled all the same. An exception of the job
    propagates as it is (not wrapped in a group). Signals are watched from the main thread
    only (tests and the benchmark run replays from others)."""
    stop = anyio.Event()
    result: list[int] = []
    failure: list[BaseException] = []

    async def watch(scope: anyio.CancelScope) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                scope.deadline = anyio.current_time() + shutdown.GRACE
                return

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:
            tg.start_soon(watch, scope)
            try:
                result.append(await job(stop=stop))
            except Terminated:
                pass
            except anyio.get_cancelled_exc_class():
                raise  # the scope's own deadline ends here; Ctrl-C goes on up
            except BaseException as exc:  # noqa: BLE001 - re-raised below, outside the group
                failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0] if result else None


async def replay(
    dsn: str,
    *,
    verify: bool = False,
    batch_size: int = 5000,
    progress: ProgressFn | None = None,
    max_row_bytes: int = 1_000_000,
    lock_timeout: float = 5.0,
    out: TextIO | None = None,
    stop: anyio.Event | None = None,
) -> int:
    """The replay as a coroutine (tests run it beside a live projector). Once `stop` is
    set, it raises Terminated at its next batch boundary (the shadow dropped first)."""
    job = _Replay(
        dsn,
        batch_size=batch_size,
        max_bytes=max_row_bytes,
        lock_timeout=lock_timeout,
        report=progress if progress is not None else ProgressPrinter(),
        out=out if out is not None else sys.stdout,
        stop=stop,
    )
    try:
        return await job.run(verify)
    except (ReplayError, pgerr.InsufficientPrivilege, pgerr.DependentObjectsStillExist) as exc:
        print(f"replay: {first_line(exc)}; the live snapshots are untouched", file=sys.stderr)
        return EXIT_REFUSED if isinstance(exc, pgerr.InsufficientPrivilege) else EXIT_DIFFERS


async def _connect(dsn: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    return await aconnect(dsn, role="replay", autocommit=autocommit, bounds=TOOL_BOUNDS)


# --------------------------------------------------------------------------- pure parts


def swap_statements(
    tables: list[TableFacts], schema: str = LIVE.schema
) -> list[sql.SQL | sql.Composed]:
    """The swap, from the catalog facts of every table: first the live tables and their
    indexes step aside (renamed to *_retired: index names are unique per schema, so the
    live names must be free first), then each shadow table gets the live owner and grants,
    the live name, and its indexes and constraints the live names. Raises ReplayError when
    a shadow does not match its live table (an index or constraint on one side only)."""
    retire: list[sql.SQL | sql.Composed] = []
    steps: list[sql.SQL | sql.Composed] = []
    for t in tables:
        for r in t.renames:
            if r.shadow_name is None or r.live_name is None:
                raise ReplayError(
                    f"the shadow of {schema}.{t.live} does not match the live table "
                    f"({r.kind} {r.live_name or r.shadow_name} on one side only)"
                )
        for r in t.renames:
            if r.kind == "index":
                assert r.live_name is not None
                retire.append(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(schema, r.live_name),
                        # 63 bytes is the longest name: keep the suffix whole.
                        sql.Identifier(r.live_name[:55] + "_retired"),
                    )
                )
        retire.append(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(schema, t.live), sql.Identifier(t.retired)
            )
        )
        steps.extend(sql.SQL(stmt) for stmt in t.carry_over)
        steps.append(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(schema, t.shadow), sql.Identifier(t.live)
            )
        )
        for r in t.renames:
            if r.shadow_name == r.live_name:
                continue
            assert r.shadow_name is not None and r.live_name is not None
            if r.kind == "index":
                steps.append(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(schema, r.shadow_name), sql.Identifier(r.live_name)
                    )
                )
            else:
                steps.append(
                    sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                        sql.Identifier(schema, t.live),
                        sql.Identifier(r.shadow_name),
                        sql.Identifier(r.live_name),
                    )
                )
    return [*retire, *steps]


def clock_differences(live: bytes, shadow: bytes) -> list[str]:
    """Names of the fields whose clocks differ; bookkeeping in parentheses."""
    a, b = decode_state(live), decode_state(shadow)
    names = sorted(
        k for k in a.fields.keys() | b.fields.keys() if a.fields.get(k) != b.fields.get(k)
    )
    names += [
        f"({k})" for k in ("deleted", "last_applied_us", "first") if getattr(a, k) != getattr(b, k)
    ]
    return names


def differences_report(found: Diff, counts: Counts, log_rows: int) -> list[str]:
    """What `replay --verify` prints: one line when the live tables equal the fold, else a
    count and a line per difference found (`found.rows`, '...' when there are more)."""
    skipped = (
        f"; {found.inflight} record(s) the live projection is still applying were not compared"
        if found.inflight
        else ""
    )
    if not found.differ:
        return [
            f"replay --verify: the live snapshots equal the log's fold ({counts.missions:,} "
            f"missions, {counts.agents:,} agents, {log_rows:,} log rows){skipped}"
        ]
    lines = [
        f"replay --verify: {found.differ} record(s) differ from the log's fold "
        f"({counts.missions:,} missions, {counts.agents:,} agents live){skipped}"
    ]
    for row in found.rows:
        fields = row.fields
        if row.what == "clock" and row.status == "differs":
            assert row.live_state is not None and row.shadow_state is not None
            fields = clock_differences(row.live_state, row.shadow_state)
        if row.status == "differs":
            detail = "fields " + ", ".join(fields) if fields else "metadata"
        elif row.status == "only-live":
            detail = "in the live table, not in the log's fold"
        else:
            detail = "missing from the live table"
        label = {"snapshot": row.kind, "due": f"{row.kind} due index"}.get(
            row.what, f"{row.kind} clock"
        )
        lines.append(f"  {label} {row.user_id}/{row.record_id}: {detail}")
    if found.differ > len({(r.kind, r.user_id, r.record_id) for r in found.rows}):
        lines.append("  ...")
    return lines


def _xmax(snapshot: str) -> int:
    """The xmax of a pg_snapshot's text form 'xmin:xmax:xip,...'."""
    return int(snapshot.split(":")[1])


def _last_record_start(rows: list[RawChange]) -> int:
    """Index of the first row of the last record in `rows` (rows are grouped by record)."""
    last = rows[-1]
    i = len(rows) - 1
    while i > 0:
        prev = rows[i - 1]
        if prev.record_id != last.record_id or prev.table_name != last.table_name:
            break
        i -= 1
    return i


# --------------------------------------------------------------------------- the job


class _Replay:
    def __init__(
        self,
        dsn: str,
        *,
        batch_size: int,
        max_bytes: int,
        lock_timeout: float,
        report: ProgressFn,
        out: TextIO,
        stop: anyio.Event | None = None,
    ) -> None:
        self.dsn = dsn
        self.stop = stop
        self.batch_size = max(1, batch_size)
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        self.report = report
        self.out = out
        self.started = time.monotonic()
        self.synchronous_commit = "on"
        self.rows = 0  # log rows folded by the build
        self.caught_up = 0  # journal rows applied after it

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _check_stop(self) -> None:
        """Between pieces of database work: stop here when asked to."""
        if self.stop is not None and self.stop.is_set():
            raise Terminated

    async def run(self, verify: bool) -> int:
        ctl = await _connect(self.dsn, autocommit=True)
        try:
            refusal = await self._preflight(ctl, verify)
            if refusal:
                print(f"replay: {refusal}", file=sys.stderr)
                return EXIT_REFUSED
            try:
                await self._prepare(ctl)
                snapshot = await self._build(ctl)
                await store.analyze(ctl, SHADOW)
                # Catch up outside the lock until little is left for the locked part.
                prev = snapshot
                for _ in range(3):
                    prev, n = await self._catch_up(ctl, prev)
                    if n < self.batch_size:
                        break
                code = await self._verify(ctl, prev) if verify else await self._swap(ctl, prev)
            except BaseException:
                # Failed, stopped or cancelled: the shadow goes before we leave.
                with anyio.CancelScope(shield=True):
                    await self._abandon(ctl)
                raise
            await self._cleanup(ctl)
            return code
        finally:
            with anyio.CancelScope(shield=True):
                await ctl.close()

    async def _preflight(self, ctl: psycopg.AsyncConnection, verify: bool) -> str | None:
        rls = await store.row_security(ctl)
        if rls.hidden:
            return (
                f"rows of public.sync_changes are hidden by row level security from role "
                f"{rls.role!r}: replay must read every row; the role needs BYPASSRLS "
                f"(ALTER ROLE {rls.role} BYPASSRLS)"
            )
        if not await store.try_lock(ctl):
            return "another replay is running on this database; try again when it ends"
        if not verify:
            found = await store.swap_blockers(ctl)
            if found:
                what = ", ".join(f"{b.table}: {b.what}" for b in found)
                return f"the swap would not carry over {what}; remove it or replay by hand"
        return None

    async def _prepare(self, ctl: psycopg.AsyncConnection) -> None:
        """Drop a killed run's leftovers, create the shadow tables, set the hold."""
        # The shadow is disposable until the swap, whose commit flushes all of it: its
        # batches need not wait for the WAL (the swap restores the server's setting).
        self.synchronous_commit = await store.setting(ctl, "synchronous_commit")
        await store.set_setting(ctl, "synchronous_commit", "off", local=False)
        async with ctl.transaction():
            # A reader of a leftover table (say of the *_retired ones, left after a swap
            # whose drop gave up) must not hold us, and the replay lock, without a bound.
            try:
                async with store.waiting_at_most(ctl, self.lock_timeout):
                    await store.drop_leftovers(ctl)
            except pgerr.LockNotAvailable:
                raise ReplayError(
                    "the tables an earlier replay left behind (its shadow, or the *_retired "
                    f"ones) are in use: a transaction held them past {self.lock_timeout:g} s; "
                    "let it end (pg_stat_activity) and replay again"
                ) from None
            await store.create_shadow(ctl)
            # Committed before the build snapshot is taken: keep_from <= its xmin.
            await store.set_hold(ctl)

    # ----------------------------------------------------------------------- build

    async def _build(self, ctl: psycopg.AsyncConnection) -> str:
        """Fold every row of the log visible in one snapshot into the shadow; returns it."""
        reader = await _connect(self.dsn)
        try:
            # No transaction()/cursor context managers: after a failure or a cancelled
            # fetch, closing the connection ends it all; a polite ROLLBACK on a connection
            # in mid-fetch could fail and hide the cause.
            snapshot = await store.begin_log_read(reader)
            total = await store.log_rows(reader)
            self.report(Progress("build", 0, total, self._elapsed()))
            await self._fold(await store.log_cursor(reader), ctl, total)
        finally:
            with anyio.CancelScope(shield=True):
                await reader.close()
        self.report(Progress("done", self.rows, max(total, self.rows), self._elapsed()))
        return snapshot

    async def _fold(
        self,
        cur: psycopg.AsyncServerCursor[RawChange],
        ctl: psycopg.AsyncConnection,
        total: int,
    ) -> None:
        """Read chunks (one prefetched while the previous is folded) and apply them cut at
        record boundaries, so a record is usually folded in one batch."""
        send, receive = anyio.create_memory_object_stream[list[RawChange] | Exception | None](1)
        failure: list[BaseException] = []

        async def fetch() -> list[RawChange]:
            # Shielded: a fetch cancelled midway would cancel psycopg's cancellation of it
            # too (see _until_sigterm); when the folder stops, this one fetch ends first.
            with anyio.CancelScope(shield=True):
                chunk = await cur.fetchmany(self.batch_size)
            return chunk

        async def read() -> None:
            with send:
                try:
                    while chunk := await fetch():
                        await send.send(chunk)
                    await send.send(None)
                except Exception as exc:  # handed to the folder, which raises it
                    await send.send(exc)

        with receive:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                try:
                    await self._fold_chunks(receive, ctl, total)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # noqa: BLE001 - re-raised below, not in a group
                    failure.append(exc)
                tg.cancel_scope.cancel()  # the reader, when the folder stopped early
        if failure:
            raise failure[0]

    async def _fold_chunks(
        self,
        chunks: MemoryObjectReceiveStream[list[RawChange] | Exception | None],
        ctl: psycopg.AsyncConnection,
        total: int,
    ) -> None:
        pending: list[RawChange] = []
        while (chunk := await chunks.receive()) is not None:
            self._check_stop()
            if isinstance(chunk, Exception):
                raise chunk
            pending.extend(chunk)
            cut = _last_record_start(pending)
            if cut == 0:
                if len(pending) < 8 * self.batch_size:
                    continue  # one long record: keep reading it
                cut = len(pending)  # a giant record: apply_rows merges it across batches
            await self._apply(ctl, pending[:cut], total)
            del pending[:cut]
        if pending:
            await self._apply(ctl, pending, total)

    async def _apply(self, ctl: psycopg.AsyncConnection, raws: list[RawChange], total: int) -> None:
        async def attempt(by_row: bool) -> None:
            apply = apply_by_row if by_row else apply_rows
            async with ctl.transaction():
                await apply(ctl, raws, max_bytes=self.max_bytes, targets=SHADOW)

        await whole_or_by_row(attempt, "replay: a batch", log)
        self.rows += len(raws)
        self.report(Progress("build", self.rows, max(total, self.rows), self._elapsed()))
        self._check_stop()

    # ----------------------------------------------------------------------- catch-up

    async def _catch_up(self, conn: psycopg.AsyncConnection, prev: str) -> tuple[str, int]:
        """Apply to the shadow every journal row not visible in `prev`. Returns a snapshot
        in which every visible row is now applied, and the rows read. Inside a caller's
        transaction the chunks are savepoints."""
        pass_snapshot: str | None = None
        after = ("0", NIL_UUID)
        total = 0
        while True:
            self._check_stop()
            try:
                chunk = await whole_or_by_row(
                    partial(self._chunk, conn, prev, after), "replay: a journal chunk", log
                )
            except ConfigError as exc:  # rows hidden by row level security
                raise ReplayError(str(exc)) from None
            rows = chunk.rows
            pass_snapshot = pass_snapshot or chunk.snapshot
            total += len(rows)
            self.caught_up += len(rows)
            # Rows come in xid order: once one is past the first chunk's snapshot, every row
            # visible in it is applied. Writers that keep committing must not keep us here
            # (under the swap's lock the live projector waits for us).
            if len(rows) < self.batch_size or int(rows[-1].xid) >= _xmax(pass_snapshot):
                return pass_snapshot, total
            after = rows[-1].key

    async def _chunk(
        self, conn: psycopg.AsyncConnection, prev: str, after: tuple[str, str], by_row: bool
    ) -> JournalChunk:
        """Read and apply one chunk of the journal to the shadow (a savepoint inside a
        caller's transaction); `by_row`: each row alone, a failing one quarantined."""
        async with conn.transaction():
            chunk = await read_journal(conn, prev, after, self.batch_size)
            # Rows gone from the log are not in its fold either: passed over here (the
            # live projection records them in quarantine). Hidden ones raise ConfigError.
            missing_rows(chunk, "replay")
            apply = apply_by_row if by_row else apply_rows
            await apply(conn, journal_raws(chunk), max_bytes=self.max_bytes, targets=SHADOW)
        return chunk

    async def _retrying(
        self,
        conn: psycopg.AsyncConnection,
        prev: str,
        what: str,
        body: Callable[[str], Awaitable[T]],
    ) -> T:
        """Run `body(prev)` in a transaction that locks the live tables; on a lock timeout,
        catch up without the lock and try again."""
        for attempt in range(1, _SWAP_ATTEMPTS + 1):
            self._check_stop()
            try:
                async with conn.transaction():
                    return await body(prev)
            except (pgerr.LockNotAvailable, pgerr.DeadlockDetected):
                if attempt == _SWAP_ATTEMPTS:
                    raise ReplayError(
                        f"could not lock the live snapshot tables for the {what} in "
                        f"{_SWAP_ATTEMPTS} tries of {self.lock_timeout:g} s (a long "
                        "transaction holds them)"
                    ) from None
                log.warning(
                    "replay: live tables busy, %s attempt %d of %d failed; catching up",
                    what,
                    attempt,
                    _SWAP_ATTEMPTS,
                )
                prev, _ = await self._catch_up(conn, prev)
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------------- swap

    async def _swap(self, ctl: psycopg.AsyncConnection, prev: str) -> int:
        async def body(prev: str) -> int:
            await store.set_setting(ctl, "synchronous_commit", self.synchronous_commit, local=True)
            await store.lock_live(ctl, "ACCESS EXCLUSIVE", self.lock_timeout)
            _, n = await self._catch_up(ctl, prev)
            await store.run_statements(ctl, swap_statements(await store.table_facts(ctl)))
            await store.clear_hold(ctl)
            await store.clear_merge_rule_note(ctl)
            return n

        started = time.monotonic()
        locked_rows = await self._retrying(ctl, prev, "swap", body)
        swap_ms = 1000 * (time.monotonic() - started)
        # Dropping the old tables unlinks their files: after the swap, not under its lock.
        try:
            await store.set_lock_timeout(ctl, self.lock_timeout, local=False)
            async with ctl.transaction():
                await store.drop_tables(ctl, RETIRED)
        except psycopg.Error as exc:
            log.warning(
                "replay: the old tables stay as *_retired (%s); the next replay drops them",
                first_line(exc),
            )
        counts = await store.counts(ctl)
        print(
            f"replay: rebuilt {counts.missions:,} missions and {counts.agents:,} agents from "
            f"{self.rows:,} log rows (+{self.caught_up:,} caught up from the journal) in "
            f"{self._elapsed():.1f} s; swapped in ({locked_rows:,} rows "
            f"applied under the lock, {swap_ms:.0f} ms)",
            file=self.out,
        )
        return EXIT_OK

    # ----------------------------------------------------------------------- verify

    async def _verify(self, ctl: psycopg.AsyncConnection, prev: str) -> int:
        async def body(prev: str) -> tuple[Diff, Counts]:
            await store.lock_live(ctl, "SHARE", self.lock_timeout)
            await self._catch_up(ctl, prev)
            found = await store.diff(ctl, await store.applied_below(ctl), _DETAIL_LIMIT)
            return found, await store.counts(ctl)

        started = time.monotonic()
        found, counts = await self._retrying(ctl, prev, "verify", body)
        log.info(
            "replay --verify: compared under a SHARE lock in %.0f ms",
            1000 * (time.monotonic() - started),
        )
        for line in differences_report(found, counts, self.rows):
            print(line, file=self.out)
        return EXIT_DIFFERS if found.differ else EXIT_OK

    # ----------------------------------------------------------------------- cleanup

    async def _cleanup(self, ctl: psycopg.AsyncConnection) -> None:
        """After a swap the shadow names are gone; after --verify the shadow goes."""
        async with ctl.transaction():
            await store.drop_tables(ctl, SHADOW)
            await store.clear_hold(ctl)

    async def _abandon(self, ctl: psycopg.AsyncConnection) -> None:
        """On the way out of a failure: close our connection (the server rolls back what
        was open, so nothing waits on our locks), then drop the shadow and our hold from a
        fresh one. Best effort: the next replay drops leftovers anyway."""
        with contextlib.suppress(Exception):
            await ctl.close()
        try:
            with anyio.fail_after(_CLEANUP_S):
                conn = await _connect(self.dsn, autocommit=True)
                async with conn:
                    await store.set_lock_timeout(conn, 5.0, local=False)
                    try:
                        await store.wait_lock(conn)
                    except pgerr.LockNotAvailable:
                        return  # another replay started meanwhile; it owns the leftovers
                    async with conn.transaction():
                        await store.drop_leftovers(conn)
                        await store.clear_hold(conn)
        except BaseException as exc:  # noqa: BLE001 - cleanup must not mask the cause
            log.warning(
                "replay: could not drop the shadow tables (%s); the next replay drops them",
                first_line(exc),
            )
