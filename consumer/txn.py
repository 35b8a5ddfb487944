"""Transaction shapes the query layers and the replay share."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import psycopg

from .apply import isolating

log = logging.getLogger(__name__)

T = TypeVar("T")


def one_statement(conn: psycopg.AsyncConnection) -> AbstractAsyncContextManager[Any]:
    """A transaction around one statement (or statements that each may stand alone),
    unless the connection autocommits (then each is its own transaction: no BEGIN and
    COMMIT round trips)."""
    return contextlib.nullcontext() if conn.autocommit else conn.transaction()


async def whole_or_by_row(
    attempt: Callable[[bool], Awaitable[T]], what: str, logger: logging.Logger = log
) -> T:
    """`attempt(False)` does a batch as a whole; when it fails for something a row holds
    (a value the driver cannot load, one the server rejects: see apply.isolating),
    `attempt(True)` goes through it again row by row, quarantining a row that fails
    alone. The attempt owns its transaction: the failed one must be rolled back before
    the second starts. Errors that are not a row's fault propagate at once."""
    try:
        return await attempt(False)
    except Exception as exc:
        if not isolating(exc):
            raise
        logger.warning("%s failed (%s); applying it row by row", what, exc)
    return await attempt(True)
