"""Follow the log: LISTEN on a dedicated autocommit connection, apply on a second one (the
work connection) at every doorbell, probe when idle, poll now and then in case a doorbell
was lost, and come back with capped exponential backoff and jitter after any connection
loss.

Leadership. Only one consumer per database applies the journal and decides: the leader
holds a session advisory lock on its listener connection. Hot standbys wait on that lock
(in slices of `lock_wait`, so the wait itself is bounded) and get it the moment the
leader's session ends. A new leader takes a new epoch (`mana_ai.take_leadership`): every
checkpoint move is compared with it in the same statement, and so can every decision
claim (`Term.epoch`, `mana_ai.still_leader`). A term is "ready" only after its first
complete catch-up, so the scheduler never decides from a projection that missed what was
written while nobody led. The term ends the moment the listener connection fails, a probe
misses its deadline, or a checkpoint move finds a newer epoch: the process stops deciding
and applying and becomes a standby again.

Bounded waits. Every connection has TCP keepalives, a user timeout and a statement timeout
(consumer.db.Bounds); the probe and the listener's statements have a client-side deadline;
an apply pass that commits nothing for `stall_after` is abandoned. A connection that stops
answering without closing is therefore dropped in seconds and /healthz says why.
"""

from __future__ import annotations

import logging
import random
import select
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import psycopg
from psycopg import errors as pgerr

from . import locks, metrics, shutdown
from .config import Settings, first_line
from .db import Connector, Deadline, closing, sever, within
from .errors import CheckpointConflict, ConfigError, Deposed, PrivilegeError, is_transient
from .health import APPLY, LEADER, STANDBY, Health
from .projection import CHECKPOINT, Projector
from .sql import load

log = logging.getLogger(__name__)

CHANNEL = "mana_ai_changes"
FATAL = (ConfigError, CheckpointConflict, PrivilegeError)
# Seconds between journal prunes: each prune holds the work connection, so it is kept short
# (at 2,000 rows/s a second of rows takes a few milliseconds; ten seconds, tens).
PRUNE_EVERY = 1.0
# Seconds between two looks at the parked work connection: it holds the doorbell's lock,
# so a server session that ended there (terminated, restarted) stops the rings; a look is
# one non-blocking poll of its socket.
WORK_CHECK = 0.5
# The first wait before reading again while a writer keeps the doorbell from arming.
MIN_WINDOW = 0.0005
# Woken from parked after a pass that read at most this many rows, the pass stays armed;
# with a collection window, only after a quiet spell of this many windows since rows last
# came (a stream keeps collecting: its rows do not ring).
KEEP_ARMED_ROWS = 1
QUIET_WINDOWS = 10
# Seconds between checkpoint moves of passes that read nothing.
QUIET_CHECKPOINT_EVERY = 1.0
# The longest wait between two attempts to arm the doorbell while writers keep holding it.
MAX_ARM_RETRY = 0.01

T = TypeVar("T")

def _has_input(conn: psycopg.AsyncConnection) -> bool:
    """The server sent something to an idle connection (an error as its session ends, an
    end of file), or the connection is gone."""
    try:
        fd = conn.pgconn.socket
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError, psycopg.OperationalError):
        return True


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter, so a fleet does not reconnect in lock step."""
    return random.uniform(0, min(cap, base * 2**attempt))


class Term:
    """One stretch of leadership of this process, from taking the lock to losing it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.ready = anyio.Event()  # the first complete catch-up of this term is done
        self.lost = anyio.Event()  # set once, when the term ends

    @property
    def valid(self) -> bool:
        return not self.lost.is_set()


class Follower:
    def __init__(
        self,
        settings: Settings,
        projector: Projector,
        health: Health,
        connector: Connector | None = None,
    ) -> None:
        self.settings = settings
        self.connector = connector or settings.connector()
        self.projector = projector
        self.health = health
        self.term: Term | None = None  # the current term, while this process leads
        self._changed = anyio.Event()  # set (and replaced) at every change of term state
        self.attempt = 0
        self.watchdog: Watchdog | None = None  # of the current term's work connection

    @property
    def leading(self) -> bool:
        """This process leads and has caught up since it took the lock."""
        term = self.term
        return term is not None and term.valid and term.ready.is_set()

    async def next_term(self) -> Term:
        """Wait until this process leads and has caught up; returns that term."""
        while True:
            term = self.term
            if term is not None and term.valid and term.ready.is_set():
                return term
            await self._changed.wait()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self) -> None:
        """Until cancelled. Transient failures are retried; configuration errors raise."""
        while True:
            try:
                await self._session()
            except FATAL:
                raise
            except Deposed as exc:
                log.warning("deposed: %s; standing by", exc)
                self.projector.forget()
                self._no_lag()  # another process leads now
            except Exception as exc:
                # Only a lost connection is retried. An error about data that escaped the
                # projection's row-by-row isolation is a bug to see, not a reconnect loop
                # that meets the same row forever.
                if not is_transient(exc):
                    raise
                self._lost(exc)
            delay = backoff_delay(self.attempt, cap=self.settings.reconnect_max)
            self.attempt += 1
            log.info("reconnecting in %.2f s (attempt %d)", delay, self.attempt)
            await anyio.sleep(delay)

    def _lost(self, exc: BaseException) -> None:
        if self.health.listener_connected:
            metrics.LISTENER_RECONNECTS.inc()
        self.health.listener_connected = False
        self.health.last_error = first_line(exc)
        metrics.LISTENER_CONNECTED.set(0)
        self.projector.forget()
        log.warning("connection lost: %s", first_line(exc))

    async def _exec(
        self,
        conn: psycopg.AsyncConnection,
        what: str,
        query: str,
        params: dict[str, Any] | tuple[Any, ...] | None = None,
        *,
        extra: float = 0.0,
    ) -> psycopg.AsyncCursor[Any]:
        """A statement of the listener connection, with a client-side deadline."""
        deadline = Deadline(self.settings.probe_timeout + extra)
        try:
            return await within(conn, deadline, conn.execute(query, params))
        except TimeoutError as exc:
            raise TimeoutError(f"{what}: {exc}") from None

    async def _session(self) -> None:
        listener = await self.connector.aconnect("listener", autocommit=True)
        async with closing(listener) as conn:
            term = await self._become_leader(conn)
            try:
                work = await self.connector.aconnect("work", autocommit=True)
                async with closing(work):
                    await self._watched(conn, work, term)
            finally:
                self._step_down(term)

    async def _watched(
        self, conn: psycopg.AsyncConnection, work: psycopg.AsyncConnection, term: Term
    ) -> None:
        """`_lead` beside one watchdog of the work connection for the whole term (a task per
        pass would cost more than a lone row's pass itself)."""
        self.watchdog = Watchdog(work, self.settings.stall_after)
        error: list[Exception] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.watchdog.run)
            try:
                await self._lead(conn, work, term)
            except Exception as exc:  # re-raised below, outside the task group (no group wrap)
                error.append(exc)
            tg.cancel_scope.cancel()
        if error:
            raise error[0]

    async def _lead(
        self, conn: psycopg.AsyncConnection, work: psycopg.AsyncConnection, term: Term
    ) -> None:
        # The projection is derived state: after a crash it is re-applied from the log,
        # so its commits need not wait for the WAL flush. WAL order still keeps each
        # checkpoint with its snapshot writes. (The scheduler's ledger stays durable:
        # it runs on the pool, not here.)
        await self._on_work(work, "settings", work.execute("SET synchronous_commit = off"))
        # LISTEN first, then catch up: a row committed in between rings the bell.
        await self._exec(conn, "LISTEN", f"LISTEN {CHANNEL}")
        self.health.listener_connected = True
        self.health.last_error = None
        metrics.LISTENER_CONNECTED.set(1)
        self.projector.forget()  # a new term trusts only what the database says
        self.projector.epoch = term.epoch
        self.health.expect(APPLY, self.settings.stall_after)
        await self._on_work(work, "bootstrap", self.projector.bootstrap(work))
        await self._catch_up(work)
        self.attempt = 0
        term.ready.set()  # decisions may start: the projection holds what was written
        self._signal()
        log.info(
            "leading (epoch %d), caught up; following the log (checkpoint %s)",
            term.epoch,
            self.projector.cp and self.projector.cp.applied_below,
        )
        await self._follow(conn, work, term)

    async def _follow(
        self, conn: psycopg.AsyncConnection, work: psycopg.AsyncConnection, term: Term
    ) -> None:
        """The doorbell rings only while this consumer is parked on it (armed: the work
        connection holds the doorbell lock, schema/migrations/0010_armed_doorbell.sql):

        - a pass that began armed and read nothing leaves the consumer parked: every row
          committed before the arming was read, and every later commit rings; a ring
          starts a pass at once;
        - a pass's first read lets the doorbell go when it finds rows (the consumer is
          busy: writers stop ringing);
        - without a collection window (`--batch-max-wait` 0, the default), every pass arms
          with its last write and reads again at once: a consumer that keeps up parks
          between rows, and every row rings; one that does not keep up reads several rows
          a pass;
        - with a window, a pass that read rows does not arm: the consumer waits the window
          and reads what came, unrung, so each pass carries a window's rows; a pass that
          reads nothing arms (with the statement that writes its last chunk, or one of its
          own) and reads once more;
        - woken after a quiet spell by a lone row (the last pass read at most one; with a
          window, none came for QUIET_WINDOWS windows), the pass keeps the doorbell armed:
          a commit after its read rings, so it parks again without reading once more (a
          lone row costs a ring, a read and a write);
        - not armed after a pass that read nothing: a writer of ours is committing (it
          holds the lock shared); its rows come with its commit: poll again shortly.

        While parked, the idle probe proves the listener connection and the epoch, the
        work connection's socket is looked at every WORK_CHECK, and the safety poll reads
        in case a ring was lost."""
        s = self.settings
        collect = s.batch_max_wait > 0
        parked = False
        retry = 0.0
        last_poll = last_prune = last_probe = time.monotonic()
        rows_at = 0.0  # when the last pass that read rows ended
        # A quiet pass moves the checkpoint only now and then: it carries no snapshot write,
        # and the rows it would move past were applied (a restart re-reads them harmlessly).
        self.projector.quiet_checkpoint_every = QUIET_CHECKPOINT_EVERY
        while True:
            projector = self.projector
            if parked:
                rang = False
                async for _ in conn.notifies(timeout=min(WORK_CHECK, s.idle_probe), stop_after=1):
                    rang = True
                now = time.monotonic()
                if rang:
                    projector.ring()
                elif _has_input(work):
                    # The work connection holds the doorbell: if its server session ended,
                    # writers stopped ringing. Run the pass: it meets what the server sent.
                    pass
                elif now - last_probe < s.idle_probe:
                    continue
                else:
                    # Idle: prove the connection (and our epoch) alive within the deadline.
                    await self._probe(conn, term)
                    last_probe = now
                    if now - last_poll < s.safety_poll:
                        self.health.beat(APPLY)
                        continue
                    last_poll = now  # the safety poll: the pass below
            was_armed = projector.armed
            if collect and projector.last_read and not parked:
                await anyio.sleep(s.batch_max_wait)  # rows keep coming: let more come
            # Woken while rows come one at a time (and, with a collection window, after a
            # quiet spell): stay armed through the pass, so that it needs no read before
            # parking again (a commit meanwhile rings).
            keep = (
                parked
                and projector.last_read <= KEEP_ARMED_ROWS
                and time.monotonic() - rows_at >= QUIET_WINDOWS * s.batch_max_wait
            )
            await self._catch_up(work, release=was_armed and not keep, arm=True, idle_only=collect)
            parked = was_armed and projector.armed and (keep or not projector.last_read)
            if projector.last_read:
                rows_at = time.monotonic()
            if not projector.armed and not projector.last_read:
                # A writer of ours is committing (it holds the lock shared): its rows come
                # with its commit. Poll again, backing off in case it stays (a writer that
                # set its constraints immediate holds the lock from its first row on).
                retry = min(max(retry * 2, MIN_WINDOW), MAX_ARM_RETRY)
                await anyio.sleep(retry)
            elif projector.armed:
                retry = 0.0
            now = time.monotonic()
            if not parked and now - last_probe >= s.idle_probe:
                await self._probe(conn, term)  # the listener is unused while rows flow
                last_probe = now
            if now - last_prune >= PRUNE_EVERY:
                pruned = await self._on_work(work, "prune", self.projector.prune(work))
                if pruned:
                    log.debug("pruned %d journal rows", pruned)
                last_prune = now

    async def _probe(self, conn: psycopg.AsyncConnection, term: Term) -> None:
        query = load("checkpoint/leader_check")
        # A statement cut off mid-query would close the connection with a warning; the
        # probe now also runs between passes while rows flow, where a stop can meet it.
        with shutdown.finishing():
            cur = await self._exec(conn, "probe", query, {"epoch": term.epoch})
            row = await cur.fetchone()
        if not (row and row[0]):
            raise Deposed(f"the leader epoch moved past {term.epoch}")

    async def _become_leader(self, conn: psycopg.AsyncConnection) -> Term:
        """Wait for the leader lock (a standby meanwhile), then take a new epoch."""
        wait_ms = int(self.settings.lock_wait * 1000)
        await self._exec(
            conn, "lock_timeout", "SELECT set_config('lock_timeout', %s, false)", (f"{wait_ms}ms",)
        )
        waiting_logged = False
        while True:
            try:
                # A standby spends its life in this wait: a shutdown lets the slice end
                # (lock_wait) rather than cut the statement off (consumer/shutdown.py).
                with shutdown.finishing():
                    await self._exec(
                        conn,
                        "leader lock",
                        "SELECT pg_advisory_lock(%s)",
                        (locks.LEADER,),
                        extra=self.settings.lock_wait,
                    )
                break
            except pgerr.LockNotAvailable:
                # Another process leads; a stop takes effect here, between two slices.
                await anyio.lowlevel.checkpoint()
            if not waiting_logged:
                log.info("standby: another consumer is applying this log; waiting to take over")
                waiting_logged = True
            self._standby()
        if waiting_logged:
            log.info("standby: the leader is gone; taking over")
        # Later statements of this session must not give up on a short lock wait.
        await self._exec(conn, "lock_timeout", "SELECT set_config('lock_timeout', '0', false)")
        cur = await self._exec(conn, "epoch", load("checkpoint/leader_take"), {"name": CHECKPOINT})
        row = await cur.fetchone()
        if row is None or row[0] is None:
            raise ConfigError("mana_ai.checkpoint has no projection row: run `consumer migrate`")
        term = Term(int(row[0]))
        self.term = term
        self.health.role = LEADER
        metrics.LEADER.set(1)
        self._signal()
        return term

    def _standby(self) -> None:
        self.health.role = STANDBY
        self.health.listener_connected = True  # a healthy standby
        self.health.release(APPLY)  # a standby applies nothing: no apply bound
        self._no_lag()

    def _no_lag(self) -> None:
        """This process applies nothing now: it has no apply lag (see Projector.stand_by)."""
        self.projector.stand_by()
        self.health.lag_seconds = 0.0
        metrics.LISTENER_CONNECTED.set(1)

    def _step_down(self, term: Term) -> None:
        """The term is over, whatever ended it: stop deciding and applying at once."""
        term.lost.set()
        if self.term is term:
            self.term = None
        self.projector.epoch = None
        self.health.role = STANDBY
        self.health.release(APPLY)
        metrics.LEADER.set(0)
        self._signal()
        log.info("leader term %d over", term.epoch)

    async def _on_work(self, work: psycopg.AsyncConnection, what: str, step: Awaitable[T]) -> T:
        """A step on the work connection. A pass may be long (a backlog), but each of its
        chunks commits quickly: give up when none has for stall_after (a work connection
        that hangs open)."""
        watchdog = self.watchdog
        if watchdog is None or watchdog.conn is not work:
            return await self._on_work_alone(work, what, step)
        deadline = watchdog.start()
        self.projector.on_progress = self._progressed
        try:
            # A step cut off mid-query would close the connection with a warning: a
            # shutdown lets it finish (consumer/shutdown.py).
            with shutdown.finishing():
                return await step
        except Exception as exc:
            if deadline.expired:
                raise TimeoutError(
                    f"{what}: nothing committed: no answer within {deadline.seconds:g} s"
                ) from exc
            raise
        finally:
            watchdog.stop()
            self.projector.on_progress = None

    def _progressed(self) -> None:
        watchdog = self.watchdog
        if watchdog is not None and watchdog.deadline is not None:
            watchdog.deadline.progress()
        self.health.beat(APPLY)

    async def _on_work_alone(
        self, work: psycopg.AsyncConnection, what: str, step: Awaitable[T]
    ) -> T:
        """`_on_work` without a term's watchdog: a deadline task of its own."""
        deadline = Deadline(self.settings.stall_after)

        def progressed() -> None:
            deadline.progress()
            self.health.beat(APPLY)

        self.projector.on_progress = progressed
        try:
            with shutdown.finishing():
                return await within(work, deadline, step)
        except TimeoutError as exc:
            raise TimeoutError(f"{what}: nothing committed: {exc}") from None
        finally:
            self.projector.on_progress = None

    async def _catch_up(
        self,
        work: psycopg.AsyncConnection,
        *,
        release: bool = False,
        arm: bool = False,
        idle_only: bool = False,
    ) -> None:
        pass_ = self.projector.catch_up(work, release=release, arm=arm, idle_only=idle_only)
        await self._on_work(work, "apply pass", pass_)
        self.health.lag_seconds = 0.0
        self.health.beat(APPLY)


class Watchdog:
    """Severs the work connection when a step on it makes no progress within `seconds`.
    One task for a whole term: steps only set and clear `deadline` (a task and a timer per
    pass would cost more than a lone row's pass). Deadlines only move later, so the task
    may oversleep nothing: it wakes at the latest at the deadline it last saw."""

    def __init__(self, conn: psycopg.AsyncConnection, seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds
        self.deadline: Deadline | None = None

    def start(self) -> Deadline:
        self.deadline = Deadline(self.seconds)
        return self.deadline

    def stop(self) -> None:
        self.deadline = None

    async def run(self) -> None:
        while True:
            deadline = self.deadline
            if deadline is None:
                await anyio.sleep(self.seconds)  # a step that starts now ends no earlier
                continue
            left = deadline.at - anyio.current_time()
            if left > 0:
                await anyio.sleep(left)
                continue
            deadline.expired = True
            sever(self.conn)
            return
