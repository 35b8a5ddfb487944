"""Stopping without noise: database work that has begun ends on its own; idle waits are
cancelled at once.

Why. Cancelling a task in the middle of a query makes psycopg cancel the query on the
server and wait for that, but anyio cancels every await inside a cancelled scope, so the
wait is cancelled too: psycopg then closes the connection ("query cancellation
interrupted"), a pipeline left behind logs "error ignored terminating", and the pool
discards the connection when it comes back ("discarding closed connection"). Nothing is
lost (the transaction rolls back), but an operator reads three warnings on every Ctrl-C.

How. Short pieces of database work (an apply pass, a scheduler pass, a write-back) run
inside `finishing()`: a shielded scope, so a shutdown waits for them. When the shutdown
begins (`begin()`, called by the signal handler before it cancels the service), every such
scope gets a deadline `GRACE` seconds away, so a database that no longer answers cannot
hold the process. Waits between pieces of work (LISTEN, sleeps) are not shielded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio

GRACE = 5.0  # seconds a started piece of database work may take once shutdown began

_scopes: set[anyio.CancelScope] = set()
_stopping = False


@contextmanager
def finishing() -> Iterator[None]:
    """Run the block to its end even if the service is being stopped (within GRACE)."""
    with anyio.CancelScope(shield=True) as scope:
        if _stopping:
            scope.deadline = anyio.current_time() + GRACE
        _scopes.add(scope)
        try:
            yield
        finally:
            _scopes.discard(scope)


def begin(grace: float = GRACE) -> None:
    """Shutdown starts: work in progress gets `grace` seconds, new work gets as long."""
    global _stopping
    _stopping = True
    deadline = anyio.current_time() + grace
    for scope in _scopes:
        scope.deadline = min(scope.deadline, deadline)


def reset() -> None:
    """For a process that serves again after a stop (tests, the demo)."""
    global _stopping
    _stopping = False
