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
projector is never stuck behind us for long; we catch up and try again.

Verify. The same build and catch-up under a SHARE lock (readers go on, the projector
waits), then the shadow is compared with the live tables and dropped. Records with
journal rows at or above the live checkpoint are left out: the live projection may not
have applied those rows yet.

Interruption. The live tables change only in the swap transaction. Ctrl-C, SIGTERM or an
exception drops the shadow tables and the hold on the way out; a replay killed outright
leaves them, and the next replay drops them before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import msgspec
import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.rows import args_row

from . import locks
from .apply import LIVE, Targets, apply_by_row, apply_rows, isolating
from .config import first_line
from .db import CONNECT_TIMEOUT
from .errors import ConfigError
from .merge import decode_state
from .model import RawChange
from .projection import NIL_UUID, JournalChunk, journal_raws, missing_rows, read_journal
from .sql import load

log = logging.getLogger(__name__)

SHADOW = Targets(
    schema=LIVE.schema,
    missions=f"{LIVE.missions}_shadow",
    agents=f"{LIVE.agents}_shadow",
    clocks=f"{LIVE.clocks}_shadow",
    due=f"{LIVE.due}_shadow",
)
# Where the swap moves the live tables; dropped after it commits (see _take_live_names).
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

EXIT_OK = 0
EXIT_DIFFERS = 1  # --verify found differences, or the swap could not be done
EXIT_REFUSED = 2  # cannot run here: row level security, another replay, privileges
EXIT_TERMINATED = 143

_SWAP_ATTEMPTS = 5
_DETAIL_LIMIT = 10


class ReplayError(Exception):
    """The replay cannot finish; the live tables are untouched. One line for the operator."""


class Progress(msgspec.Struct, frozen=True):
    """Where the build stands. `phase`: 'build' while folding the log, 'done' at its end."""

    phase: str
    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return max(self.total - self.done, 0) / rate if rate > 0 else None

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta
        tail = (
            f"ETA {_clock(eta)}"
            if self.phase == "build" and eta is not None
            else (f"in {_clock(self.elapsed)}")
        )
        return (
            f"replay: {self.done:,} of {self.total:,} rows ({min(pct, 100.0):.1f}%), "
            f"{self.rate:,.0f} rows/s, {tail}"
        )


ProgressFn = Callable[[Progress], None]


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class ProgressPrinter:
    """On a terminal, one line updated in place; otherwise a log line every `interval` s."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self._last = float("-inf")

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.phase == "done"
        if not final and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            # \033[K clears what a longer previous line left behind.
            self.stream.write("\r" + p.line() + "\033[K" + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("%s", p.line())


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
    try:
        return asyncio.run(
            replay(
                dsn,
                verify=verify,
                batch_size=batch_size,
                progress=progress,
                max_row_bytes=max_row_bytes,
                lock_timeout=lock_timeout,
                out=out,
                handle_sigterm=True,
            )
        )
    except asyncio.CancelledError:  # SIGTERM (Ctrl-C comes out as KeyboardInterrupt)
        print("replay: terminated; the live snapshots are untouched", file=sys.stderr)
        return EXIT_TERMINATED


async def replay(
    dsn: str,
    *,
    verify: bool = False,
    batch_size: int = 5000,
    progress: ProgressFn | None = None,
    max_row_bytes: int = 1_000_000,
    lock_timeout: float = 5.0,
    out: TextIO | None = None,
    handle_sigterm: bool = False,
) -> int:
    """The replay as a coroutine (tests run it beside a live projector)."""
    out = out if out is not None else sys.stdout
    report = progress if progress is not None else ProgressPrinter()
    if handle_sigterm:
        _cancel_on_sigterm()
    job = _Replay(
        dsn,
        batch_size=batch_size,
        max_bytes=max_row_bytes,
        lock_timeout=lock_timeout,
        report=report,
        out=out,
    )
    try:
        return await job.run(verify)
    except (ReplayError, pgerr.InsufficientPrivilege, pgerr.DependentObjectsStillExist) as exc:
        print(f"replay: {first_line(exc)}; the live snapshots are untouched", file=sys.stderr)
        return EXIT_REFUSED if isinstance(exc, pgerr.InsufficientPrivilege) else EXIT_DIFFERS


def _cancel_on_sigterm() -> None:
    task = asyncio.current_task()
    if task is None:
        return
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def _connect(dsn: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT
        )
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to the database: {first_line(exc)}") from None
    return conn


async def _one(
    conn: psycopg.AsyncConnection, query: str | sql.Composed, params: Any = None
) -> tuple:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row


def _fmt(name: str, **tables: str) -> sql.Composed:
    """A query file with {placeholders} filled by mana_ai table identifiers."""
    return sql.SQL(load(name)).format(
        **{k: sql.Identifier(LIVE.schema, v) for k, v in tables.items()}
    )


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
    ) -> None:
        self.dsn = dsn
        self.batch_size = max(1, batch_size)
        self.max_bytes = max_bytes
        self.lock_timeout = lock_timeout
        self.report = report
        self.out = out
        self.started = time.monotonic()
        self.synchronous_commit = "on"
        self.rows = 0  # log rows folded by the build
        self.caught_up = 0  # journal rows applied after it

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
                await ctl.execute(
                    _fmt(
                        "replay/analyze.tmpl",
                        clocks=SHADOW.clocks,
                        missions=SHADOW.missions,
                        due=SHADOW.due,
                        agents=SHADOW.agents,
                    )
                )
                # Catch up outside the lock until little is left for the locked part.
                prev = snapshot
                for _ in range(3):
                    prev, n = await self._catch_up(ctl, prev)
                    if n < self.batch_size:
                        break
                code = await self._verify(ctl, prev) if verify else await self._swap(ctl, prev)
            except BaseException:
                await self._abandon(ctl)
                raise
            await self._cleanup(ctl)
            return code
        finally:
            await ctl.close()

    async def _preflight(self, ctl: psycopg.AsyncConnection, verify: bool) -> str | None:
        hidden, role = await _one(ctl, load("journal/rls_active"))
        if hidden:
            return (
                f"rows of public.sync_changes are hidden by row level security from role "
                f"{role!r}: replay must read every row; the role needs BYPASSRLS "
                f"(ALTER ROLE {role} BYPASSRLS)"
            )
        (locked,) = await _one(ctl, load("replay/lock"), {"key": locks.REPLAY})
        if not locked:
            return "another replay is running on this database; try again when it ends"
        if not verify:
            cur = await ctl.execute(
                load("replay/guard"),
                {"tables": [f"{LIVE.schema}.{live}" for live, _, _ in TABLES]},
            )
            found = await cur.fetchall()
            if found:
                what = ", ".join(f"{t}: {w}" for t, w in found)
                return f"the swap would not carry over {what}; remove it or replay by hand"
        return None

    async def _prepare(self, ctl: psycopg.AsyncConnection) -> None:
        """Drop a killed run's leftovers, create the shadow tables, set the hold."""
        # The shadow is disposable until the swap, whose commit flushes all of it: its
        # batches need not wait for the WAL (the swap restores the server's setting).
        (self.synchronous_commit,) = await _one(ctl, "SHOW synchronous_commit")
        await ctl.execute("SELECT set_config('synchronous_commit', 'off', false)")
        async with ctl.transaction():
            await _drop_leftovers(ctl)
            for live, shadow, _ in TABLES:
                await ctl.execute(_fmt("replay/shadow_create.tmpl", live=live, shadow=shadow))
            # Committed before the build snapshot is taken: keep_from <= its xmin.
            await ctl.execute(load("replay/hold_set"))

    # ----------------------------------------------------------------------- build

    async def _build(self, ctl: psycopg.AsyncConnection) -> str:
        """Fold every row of the log visible in one snapshot into the shadow; returns it."""
        reader = await _connect(self.dsn)
        try:
            await reader.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            await reader.set_read_only(True)
            # No transaction()/cursor context managers: after a failure or a cancelled
            # fetch, closing the connection ends it all; a polite ROLLBACK on a connection
            # in mid-fetch could fail and hide the cause.
            # The first statement fixes the transaction's snapshot: the cursor's.
            (snapshot,) = await _one(reader, "SELECT pg_current_snapshot()::text")
            (total,) = await _one(reader, load("replay/count"))
            self.report(Progress("build", 0, total, time.monotonic() - self.started))
            cur = reader.cursor(name="mana_ai_replay", row_factory=args_row(RawChange))
            await cur.execute(load("journal/log_read"))
            await self._fold(cur, ctl, total)
        finally:
            await reader.close()
        self.report(
            Progress("done", self.rows, max(total, self.rows), time.monotonic() - self.started)
        )
        return snapshot

    async def _fold(
        self,
        cur: psycopg.AsyncServerCursor[RawChange],
        ctl: psycopg.AsyncConnection,
        total: int,
    ) -> None:
        """Read chunks (one prefetched while the previous is folded) and apply them cut at
        record boundaries, so a record is usually folded in one batch."""
        chunks: asyncio.Queue[list[RawChange] | Exception | None] = asyncio.Queue(maxsize=1)

        async def read() -> None:
            try:
                while chunk := await cur.fetchmany(self.batch_size):
                    await chunks.put(chunk)
                await chunks.put(None)
            except Exception as exc:  # handed to the folder, which raises it
                await chunks.put(exc)

        reader = asyncio.create_task(read())
        try:
            pending: list[RawChange] = []
            while (chunk := await chunks.get()) is not None:
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
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _apply(self, ctl: psycopg.AsyncConnection, raws: list[RawChange], total: int) -> None:
        try:
            async with ctl.transaction():
                await apply_rows(ctl, raws, max_bytes=self.max_bytes, targets=SHADOW)
        except Exception as exc:
            if not isolating(exc):
                raise
            # Something a row holds defeats the batch: row by row, the culprit quarantined.
            log.warning("replay: a batch failed (%s); applying it row by row", exc)
            async with ctl.transaction():
                await apply_by_row(ctl, raws, max_bytes=self.max_bytes, targets=SHADOW)
        self.rows += len(raws)
        self.report(
            Progress("build", self.rows, max(total, self.rows), time.monotonic() - self.started)
        )

    # ----------------------------------------------------------------------- catch-up

    async def _catch_up(self, conn: psycopg.AsyncConnection, prev: str) -> tuple[str, int]:
        """Apply to the shadow every journal row not visible in `prev`. Returns a snapshot
        in which every visible row is now applied, and the rows read. Inside a caller's
        transaction the chunks are savepoints."""
        pass_snapshot: str | None = None
        after_xid, after_id = "0", NIL_UUID
        total = 0
        while True:
            try:
                chunk = await self._chunk(conn, prev, (after_xid, after_id), by_row=False)
            except Exception as exc:
                if isinstance(exc, ReplayError) or not isolating(exc):
                    raise
                log.warning("replay: a journal chunk failed (%s); applying it row by row", exc)
                chunk = await self._chunk(conn, prev, (after_xid, after_id), by_row=True)
            rows = chunk.rows
            pass_snapshot = pass_snapshot or chunk.snapshot
            total += len(rows)
            self.caught_up += len(rows)
            # Rows come in xid order: once one is past the first chunk's snapshot, every row
            # visible in it is applied. Writers that keep committing must not keep us here
            # (under the swap's lock the live projector waits for us).
            if len(rows) < self.batch_size or int(rows[-1][0]) >= _xmax(pass_snapshot):
                return pass_snapshot, total
            after_xid, after_id = rows[-1][0], rows[-1][1]

    async def _chunk(
        self, conn: psycopg.AsyncConnection, prev: str, after: tuple[str, str], *, by_row: bool
    ) -> JournalChunk:
        """Read and apply one chunk of the journal to the shadow (a savepoint inside a
        caller's transaction); `by_row`: each row alone, a failing one quarantined."""
        async with conn.transaction():
            chunk = await read_journal(conn, prev, after, self.batch_size)
            try:
                # Rows gone from the log are not in its fold either: passed over here
                # (the live projection records them in quarantine).
                missing_rows(chunk, "replay")
            except ConfigError as exc:
                raise ReplayError(str(exc)) from None
            apply = apply_by_row if by_row else apply_rows
            await apply(conn, journal_raws(chunk), max_bytes=self.max_bytes, targets=SHADOW)
        return chunk

    async def _locked(self, conn: psycopg.AsyncConnection, mode: str) -> None:
        """LOCK the live tables inside the caller's transaction, giving up after
        lock_timeout: a queued ACCESS EXCLUSIVE request would stall everyone behind it."""
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{int(self.lock_timeout * 1000)}ms",)
        )
        await conn.execute(
            sql.SQL(load("replay/lock_live.tmpl")).format(
                clocks=sql.Identifier(LIVE.schema, LIVE.clocks),
                missions=sql.Identifier(LIVE.schema, LIVE.missions),
                due=sql.Identifier(LIVE.schema, LIVE.due),
                agents=sql.Identifier(LIVE.schema, LIVE.agents),
                mode=sql.SQL(mode),
            )
        )

    async def _retrying(self, conn: psycopg.AsyncConnection, prev: str, what: str, body):
        """Run `body(prev)` in a transaction that locks the live tables; on a lock timeout,
        catch up without the lock and try again."""
        for attempt in range(1, _SWAP_ATTEMPTS + 1):
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
            await ctl.execute(
                "SELECT set_config('synchronous_commit', %s, true)", (self.synchronous_commit,)
            )
            await self._locked(ctl, "ACCESS EXCLUSIVE")
            _, n = await self._catch_up(ctl, prev)
            await self._take_live_names(ctl)
            await ctl.execute(load("replay/hold_clear"))
            # every state rebuilt by this rule
            await ctl.execute(load("snapshots/merge_rule_clear"))
            return n

        started = time.monotonic()
        locked_rows = await self._retrying(ctl, prev, "swap", body)
        swap_ms = 1000 * (time.monotonic() - started)
        # Dropping the old tables unlinks their files: after the swap, not under its lock.
        try:
            await ctl.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                (f"{int(self.lock_timeout * 1000)}ms",),
            )
            async with ctl.transaction():
                await ctl.execute(
                    _fmt(
                        "replay/shadow_drop.tmpl",
                        clocks=RETIRED.clocks,
                        missions=RETIRED.missions,
                        due=RETIRED.due,
                        agents=RETIRED.agents,
                    )
                )
        except psycopg.Error as exc:
            log.warning(
                "replay: the old tables stay as *_retired (%s); the next replay drops them",
                first_line(exc),
            )
        missions, agents = await _one(
            ctl, _fmt("replay/counts.tmpl", missions=LIVE.missions, agents=LIVE.agents)
        )
        print(
            f"replay: rebuilt {missions:,} missions and {agents:,} agents from "
            f"{self.rows:,} log rows (+{self.caught_up:,} caught up from the journal) in "
            f"{time.monotonic() - self.started:.1f} s; swapped in ({locked_rows:,} rows "
            f"applied under the lock, {swap_ms:.0f} ms)",
            file=self.out,
        )
        return EXIT_OK

    async def _take_live_names(self, conn: psycopg.AsyncConnection) -> None:
        """In the swap transaction: the live tables and their indexes step aside (renamed
        to *_retired), the shadow tables, their indexes and constraints take the live
        names (and the live owner and grants)."""
        retire: list[sql.Composed] = []
        steps: list[sql.Composed | sql.SQL] = []
        for live, shadow, retired in TABLES:
            names = {
                "live": sql.Identifier(LIVE.schema, live).as_string(conn),
                "shadow": sql.Identifier(LIVE.schema, shadow).as_string(conn),
            }
            cur = await conn.execute(load("replay/carry_over"), names)
            carry = [sql.SQL(stmt) for (stmt,) in await cur.fetchall()]
            cur = await conn.execute(load("replay/renames"), names)
            renames = await cur.fetchall()
            for what, shadow_name, live_name in renames:
                if shadow_name is None or live_name is None:
                    raise ReplayError(
                        f"the shadow of {LIVE.schema}.{live} does not match the live table "
                        f"({what} {live_name or shadow_name} on one side only)"
                    )
            # Index names are unique per schema: the live ones must be free first.
            for what, _, live_name in renames:
                if what == "index":
                    retire.append(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(LIVE.schema, live_name),
                            sql.Identifier(live_name[:55] + "_retired"),
                        )
                    )
            retire.append(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(LIVE.schema, live), sql.Identifier(retired)
                )
            )
            steps.extend(carry)
            steps.append(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                    sql.Identifier(LIVE.schema, shadow), sql.Identifier(live)
                )
            )
            for what, shadow_name, live_name in renames:
                if shadow_name == live_name:
                    continue
                if what == "index":
                    steps.append(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(LIVE.schema, shadow_name), sql.Identifier(live_name)
                        )
                    )
                else:
                    steps.append(
                        sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                            sql.Identifier(LIVE.schema, live),
                            sql.Identifier(shadow_name),
                            sql.Identifier(live_name),
                        )
                    )
        for step in [*retire, *steps]:
            await conn.execute(step)

    # ----------------------------------------------------------------------- verify

    async def _verify(self, ctl: psycopg.AsyncConnection, prev: str) -> int:
        async def body(prev: str) -> tuple:
            await self._locked(ctl, "SHARE")
            await self._catch_up(ctl, prev)
            cur = await ctl.execute(load("checkpoint/get"), {"name": "projection"})
            cp = await cur.fetchone()
            await ctl.execute(
                _fmt(
                    "replay/diff.tmpl",
                    live_missions=LIVE.missions,
                    live_agents=LIVE.agents,
                    live_clocks=LIVE.clocks,
                    live_due=LIVE.due,
                    shadow_missions=SHADOW.missions,
                    shadow_agents=SHADOW.agents,
                    shadow_clocks=SHADOW.clocks,
                    shadow_due=SHADOW.due,
                ),
                {"applied_below": cp[0] if cp else "0"},
            )
            summary = await _one(ctl, load("replay/diff_summary"))
            cur = await ctl.execute(load("replay/diff_detail"), {"limit": _DETAIL_LIMIT})
            details = await cur.fetchall()
            counts = await _one(
                ctl, _fmt("replay/counts.tmpl", missions=LIVE.missions, agents=LIVE.agents)
            )
            return summary, details, counts

        started = time.monotonic()
        (differ, inflight), details, (missions, agents) = await self._retrying(
            ctl, prev, "verify", body
        )
        log.info(
            "replay --verify: compared under a SHARE lock in %.0f ms",
            1000 * (time.monotonic() - started),
        )
        skipped = (
            f"; {inflight} record(s) the live projection is still applying were not compared"
            if inflight
            else ""
        )
        if not differ:
            print(
                f"replay --verify: the live snapshots equal the log's fold ({missions:,} "
                f"missions, {agents:,} agents, {self.rows:,} log rows){skipped}",
                file=self.out,
            )
            return EXIT_OK
        print(
            f"replay --verify: {differ} record(s) differ from the log's fold "
            f"({missions:,} missions, {agents:,} agents live){skipped}",
            file=self.out,
        )
        for kind, user_id, record_id, what, status, fields, live, shadow in details:
            if what == "clock" and status == "differs":
                fields = clock_differences(live, shadow)
            if status == "differs":
                detail = "fields " + ", ".join(fields) if fields else "metadata"
            elif status == "only-live":
                detail = "in the live table, not in the log's fold"
            else:
                detail = "missing from the live table"
            label = {"snapshot": kind, "due": f"{kind} due index"}.get(what, f"{kind} clock")
            print(f"  {label} {user_id}/{record_id}: {detail}", file=self.out)
        if differ > len({(d[0], d[1], d[2]) for d in details}):
            print("  ...", file=self.out)
        return EXIT_DIFFERS

    # ----------------------------------------------------------------------- cleanup

    async def _cleanup(self, ctl: psycopg.AsyncConnection) -> None:
        """After a swap the shadow names are gone; after --verify the shadow goes."""
        async with ctl.transaction():
            await ctl.execute(
                _fmt(
                    "replay/shadow_drop.tmpl",
                    clocks=SHADOW.clocks,
                    missions=SHADOW.missions,
                    due=SHADOW.due,
                    agents=SHADOW.agents,
                )
            )
            await ctl.execute(load("replay/hold_clear"))

    async def _abandon(self, ctl: psycopg.AsyncConnection) -> None:
        """On the way out of a failure: close our connection (the server rolls back what
        was open, so nothing waits on our locks), then drop the shadow and our hold from a
        fresh one. Best effort: the next replay drops leftovers anyway."""
        with contextlib.suppress(Exception):
            await ctl.close()
        try:
            async with asyncio.timeout(30):
                conn = await _connect(self.dsn, autocommit=True)
                async with conn:
                    await conn.execute("SELECT set_config('lock_timeout', '5s', false)")
                    try:
                        await conn.execute(load("replay/lock_wait"), {"key": locks.REPLAY})
                    except pgerr.LockNotAvailable:
                        return  # another replay started meanwhile; it owns the leftovers
                    async with conn.transaction():
                        await _drop_leftovers(conn)
                        await conn.execute(load("replay/hold_clear"))
        except BaseException as exc:  # noqa: BLE001 - cleanup must not mask the cause
            log.warning(
                "replay: could not drop the shadow tables (%s); the next replay drops them",
                first_line(exc),
            )


async def _drop_leftovers(conn: psycopg.AsyncConnection) -> None:
    """The shadow tables, and old tables a swap could not drop (see _swap)."""
    for t in (SHADOW, RETIRED):
        await conn.execute(
            _fmt(
                "replay/shadow_drop.tmpl",
                clocks=t.clocks,
                missions=t.missions,
                due=t.due,
                agents=t.agents,
            )
        )


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
