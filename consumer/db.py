"""Connections: the one factory every session of ours comes from (the service, the command
line tools, the replay, the benchmark and the tests). Every connection is named
`mana-ai-consumer/<role>` in pg_stat_activity, a database that cannot be reached is one clear
line (`Unreachable`), every wait is bounded (connect timeout, TCP keepalives and user
timeout on both ends, statement timeout), and writes under row level security run in
user-scoped transactions."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from .config import first_line
from .errors import Unreachable

CONNECT_TIMEOUT = 10
# Shown in pg_stat_activity as "mana-ai-consumer/<role>", so operators (and tests) can tell
# our sessions apart and see what each is for.
APPLICATION_NAME = "mana-ai-consumer"
# What the connections are for. listener: LISTEN and the leader lock; work: the follower's
# applies; scheduler and runner: the service's two pools; the rest: one command each.
ROLES = frozenset(
    {"listener", "work", "scheduler", "runner", "replay", "migrate", "status", "demo", "bench",
     "test"}
)
POOL_OPEN_TIMEOUT = 15.0  # seconds a pool may take to open its first connections

Configure = Callable[[psycopg.AsyncConnection], Awaitable[None]]


def application_name(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown connection role {role!r}")
    return f"{APPLICATION_NAME}/{role}"


CLIENT_CHECK_MS = 1000


class Bounds(msgspec.Struct, frozen=True, kw_only=True):
    """How long any wait on a connection may last."""

    connect_timeout: float = 5.0
    # A peer silent this long is dead: client keepalives + TCP_USER_TIMEOUT notice a vanished
    # server, and the same settings on the server's side free a vanished leader's lock.
    peer_timeout: float = 4.0
    statement_timeout: float = 30.0  # 0: no limit

    def kwargs(self, role: str, dsn: str = "") -> dict[str, Any]:
        """Connection parameters for psycopg (libpq keywords). `dsn`: its own `options`
        are kept (ours follow them, so ours win where both set the same)."""
        idle, interval, count = keepalive_split(self.peer_timeout)
        user_timeout_ms = int(self.peer_timeout * 1000)
        server: dict[str, int | str] = {
            # The server's side of the same bounds (all settable per session).
            "tcp_keepalives_idle": idle,
            "tcp_keepalives_interval": interval,
            "tcp_keepalives_count": count,
            "tcp_user_timeout": user_timeout_ms,
            # A session whose client is gone (killed, its socket cut) ends within a second
            # even while its statement waits on a lock: otherwise it holds the rows it wrote
            # until the lock comes or the statement times out, and a new leader's first
            # write waits behind them.
            "client_connection_check_interval": CLIENT_CHECK_MS,
            # Instants come back in UTC, whatever the server's or the database's zone: a
            # datetime read in a zone with daylight saving never compares equal to a UTC one
            # during the hour the zone falls back (the scheduler matches the claims it won
            # by their instant).
            "TimeZone": "UTC",
        }
        if self.statement_timeout > 0:  # else the role's or the database's default holds
            server["statement_timeout"] = int(self.statement_timeout * 1000)
        theirs = conninfo_to_dict(dsn).get("options") if dsn else None
        ours = " ".join(f"-c {k}={v}" for k, v in server.items())
        return {
            # libpq rounds connect_timeout to whole seconds and treats 1 as 2.
            "connect_timeout": max(2, math.ceil(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": idle,
            "keepalives_interval": interval,
            "keepalives_count": count,
            "tcp_user_timeout": user_timeout_ms,
            "application_name": application_name(role),
            "options": f"{theirs} {ours}" if theirs else ours,
        }


def keepalive_split(peer_timeout: float) -> tuple[int, int, int]:
    """(idle, interval, count) in whole seconds with idle + interval * count equal to the
    timeout (at least 3 s): a silent peer is declared dead by then, not later."""
    total = max(3, round(peer_timeout))
    count = 3 if total >= 4 else 2
    interval = max(1, total // (count + 1))
    idle = max(1, total - interval * count)
    return idle, interval, count


# The command line tools (migrate, status, replay): keepalives and a connect timeout, and no
# statement timeout of ours (a migration or a replay's build may take long).
TOOL_BOUNDS = Bounds(connect_timeout=CONNECT_TIMEOUT, peer_timeout=10.0, statement_timeout=0)


def _unreachable(exc: BaseException) -> Unreachable:
    return Unreachable(f"cannot connect to the database: {first_line(exc)}")


class Connector:
    """Opens our connections to one database, all alike: named by role, bounded by
    `bounds`, a failure to connect raised as `Unreachable`. `configure` runs on every new
    async connection (pooled ones too): the benchmark times statements with it."""

    def __init__(
        self, dsn: str, bounds: Bounds = TOOL_BOUNDS, *, configure: Configure | None = None
    ) -> None:
        self.dsn = dsn
        self.bounds = bounds
        self.configure = configure

    def kwargs(self, role: str) -> dict[str, Any]:
        return self.bounds.kwargs(role, self.dsn)

    def connect(self, role: str, *, autocommit: bool = False) -> psycopg.Connection:
        kwargs = self.kwargs(role)
        try:
            return psycopg.connect(self.dsn, autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as exc:
            raise _unreachable(exc) from None

    async def aconnect(self, role: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
        kwargs = self.kwargs(role)
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=autocommit, **kwargs
            )
        except psycopg.OperationalError as exc:
            raise _unreachable(exc) from None
        if self.configure is not None:
            try:
                await self.configure(conn)
            except BaseException:
                await conn.close()
                raise
        return conn

    def pool(self, role: str, *, max_size: int, min_size: int = 1) -> AsyncConnectionPool:
        """A pool of `role` connections, not yet open (`open_pool` opens one)."""
        return AsyncConnectionPool(
            self.dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            name=application_name(role),
            kwargs=self.kwargs(role),
            configure=self.configure,
        )

    @asynccontextmanager
    async def open_pool(
        self,
        role: str,
        *,
        max_size: int,
        min_size: int = 1,
        open_within: float = POOL_OPEN_TIMEOUT,
    ) -> AsyncIterator[AsyncConnectionPool]:
        """An open pool, closed on exit. A pool whose first `min_size` connections do not
        come within `open_within` raises `Unreachable` with libpq's reason."""
        pool = self.pool(role, max_size=max_size, min_size=min_size)
        try:
            await pool.open(wait=True, timeout=open_within)
        except Exception as exc:
            await pool.close()
            raise await self._why(role, exc) from None
        async with pool:
            yield pool

    async def _why(self, role: str, exc: Exception) -> Exception:
        """The pool only says it timed out: one direct attempt tells libpq's reason."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.dsn, **self.kwargs(role))
        except psycopg.OperationalError as direct:
            return _unreachable(direct)
        await conn.close()
        return _unreachable(exc)


def connect(
    dsn: str, *, role: str, autocommit: bool = False, bounds: Bounds = TOOL_BOUNDS
) -> psycopg.Connection:
    """One connection (blocking); the command line tools' bounds unless told."""
    return Connector(dsn, bounds).connect(role, autocommit=autocommit)


async def aconnect(
    dsn: str, *, role: str, autocommit: bool = False, bounds: Bounds | None = None
) -> psycopg.AsyncConnection:
    """One async connection; the service's default bounds unless told."""
    return await Connector(dsn, bounds or Bounds()).aconnect(role, autocommit=autocommit)


T = TypeVar("T")


def sever(conn: psycopg.AsyncConnection) -> None:
    """Shut the connection's socket down both ways (the descriptor stays psycopg's): a
    statement waiting on it ends at once with a connection error. Cancelling the waiting
    task instead would make psycopg send a cancel request through the same dead path and
    tear the connection down in the middle of its own wait."""
    try:
        dup = os.dup(conn.pgconn.socket)
    except (OSError, psycopg.Error):
        return  # already closed
    with socket.socket(fileno=dup) as sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Deadline:
    """A client-side deadline for waits on one connection, which `progress()` pushes on."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = anyio.current_time() + seconds
        self.expired = False

    def progress(self) -> None:
        self.at = anyio.current_time() + self.seconds


async def within(conn: psycopg.AsyncConnection, deadline: Deadline, step: Awaitable[T]) -> T:
    """Await `step` (a statement on `conn`); sever `conn` if the deadline passes first. The
    server's statement timeout cannot help when the request never reaches it.

    Raises TimeoutError when severed; any other error of `step` as it is."""
    result: list[T] = []
    error: list[Exception] = []

    async def watch() -> None:
        while (left := deadline.at - anyio.current_time()) > 0:  # noqa: ASYNC110 - moves on
            await anyio.sleep(left)
        deadline.expired = True
        sever(conn)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            result.append(await step)
        except Exception as exc:  # re-raised below, outside the task group (no group wrap)
            error.append(exc)
        tg.cancel_scope.cancel()
    if deadline.expired and error:
        raise TimeoutError(f"no answer within {deadline.seconds:g} s") from error[0]
    if error:
        raise error[0]
    return result[0]


@asynccontextmanager
async def closing(conn: psycopg.AsyncConnection) -> AsyncIterator[psycopg.AsyncConnection]:
    """Close on exit, whatever happened. `async with conn` first awaits a rollback, and when
    that await is cancelled the close is skipped: the session, and a lock it holds, would
    live on until the object is collected. close() itself does not yield."""
    try:
        yield conn
    finally:
        await conn.close()


@asynccontextmanager
async def user_transaction(
    conn: psycopg.AsyncConnection, user_id: str
) -> AsyncIterator[psycopg.AsyncConnection]:
    """A transaction in which row level security sees exactly `user_id`."""
    if not user_id or not user_id.strip():
        # RLS would compare against '' and a write could land under no one: refuse.
        raise ValueError("refusing a user-scoped transaction with an empty user id")
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.current_user_id', %s, true)", (user_id,))
        yield conn
