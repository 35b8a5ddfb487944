"""Which errors the follower takes for a lost connection (reconnect) and which are about
data (never retried as a reconnect: the same row would come back forever)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pgerr

from consumer.errors import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        psycopg.InterfaceError("the connection is closed"),
        pgerr.AdminShutdown("terminating connection due to administrator command"),
        pgerr.CannotConnectNow("the database system is starting up"),
        pgerr.QueryCanceled("canceling statement due to statement timeout"),
        pgerr.LockNotAvailable("canceling statement due to lock timeout"),
        pgerr.SerializationFailure("could not serialize access"),
        pgerr.TooManyConnections("too many clients already"),
        pgerr.IdleInTransactionSessionTimeout("idle-in-transaction timeout"),
        TimeoutError("probe: no answer within 5 s"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_lost_connections_and_timeouts_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        # psycopg's loader on a timestamptz of 'infinity': client side, no SQLSTATE.
        psycopg.DataError("timestamp too large (after year 10K): 'infinity'"),
        pgerr.InvalidParameterValue("the server rejects this row"),
        pgerr.InvalidTextRepresentation("invalid input syntax for type json"),
        pgerr.StatementTooComplex("stack depth limit exceeded"),
        pgerr.UniqueViolation("duplicate key"),
        RecursionError("maximum recursion depth exceeded"),
        ValueError("a bug"),
    ],
)
def test_data_errors_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)
