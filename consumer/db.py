"""Connections: one clear error when the database cannot be reached, every wait bounded
(connect timeout, TCP keepalives and user timeout on both ends, statement timeout), and
user-scoped transactions for writes under row level security."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from .config import first_line
from .errors import ConfigError

CONNECT_TIMEOUT = 10
# Shown in pg_stat_activity, so operators (and tests) can tell our sessions apart; the
# service's sessions add their purpose ("mana-ai-consumer listener", "... work", "... pool").
APPLICATION_NAME = "mana-ai-consumer"


class Bounds(msgspec.Struct, frozen=True, kw_only=True):
    """How long any wait on a connection may last."""

    connect_timeout: float = 5.0
    # A peer silent this long is dead: client keepalives + TCP_USER_TIMEOUT notice a vanished
    # server, and the same settings on the server's side free a vanished leader's lock.
    peer_timeout: float = 4.0
    statement_timeout: float = 30.0  # 0: no limit

    def kwargs(self, purpose: str | None = None, dsn: str = "") -> dict[str, Any]:
        """Connection parameters for psycopg (libpq keywords). `dsn`: its own `options`
        are kept (ours follow them, so ours win where both set the same)."""
        idle, interval, count = keepalive_split(self.peer_timeout)
        user_timeout_ms = int(self.peer_timeout * 1000)
        server: dict[str, int] = {
            # The server's side of the same bounds (all settable per session).
            "tcp_keepalives_idle": idle,
            "tcp_keepalives_interval": interval,
            "tcp_keepalives_count": count,
            "tcp_user_timeout": user_timeout_ms,
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
            "application_name": f"{APPLICATION_NAME} {purpose}" if purpose else APPLICATION_NAME,
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


# The command line tools (migrate, status): keepalives and a connect timeout, and no
# statement timeout of ours (a migration may take long).
TOOL_BOUNDS = Bounds(connect_timeout=CONNECT_TIMEOUT, peer_timeout=10.0, statement_timeout=0)


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **TOOL_BOUNDS.kwargs(None, dsn))
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to the database: {first_line(exc)}") from None


async def aconnect(
    dsn: str,
    *,
    autocommit: bool = False,
    bounds: Bounds | None = None,
    purpose: str | None = None,
) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        dsn, autocommit=autocommit, **(bounds or Bounds()).kwargs(purpose, dsn)
    )


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
