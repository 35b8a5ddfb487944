"""Connections: one clear error when the database cannot be reached, and user-scoped
transactions for writes under row level security."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from .config import first_line
from .errors import ConfigError

CONNECT_TIMEOUT = 10
# Shown in pg_stat_activity, so operators (and tests) can tell our sessions apart.
APPLICATION_NAME = "mana-ai-consumer"


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to the database: {first_line(exc)}") from None


async def aconnect(dsn: str, *, autocommit: bool = False) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        dsn,
        autocommit=autocommit,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=APPLICATION_NAME,
    )


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
