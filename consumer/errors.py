"""Errors that end the process with one clear line instead of a stack trace, and which
database errors are worth a reconnect."""

import psycopg


class ConfigError(Exception):
    """Bad or missing configuration: exit code 2."""

    exit_code = 2


class Unreachable(Exception):
    """The database cannot be reached (refused, no answer, authentication failed): one line
    naming libpq's reason, exit code 2 from a command. Transient to a running follower,
    which reconnects with backoff as it does after any connection loss."""

    exit_code = 2


class PrivilegeError(Exception):
    """The database role lacks a privilege a migration needs: exit code 2."""

    exit_code = 2


class CheckpointConflict(Exception):
    """Another worker moved the checkpoint under us: stop instead of overwriting its work."""


class Deposed(Exception):
    """A newer leader took over: stop deciding and applying, and become a standby again."""


# SQLSTATE classes after which reconnecting (or simply trying again) is the cure: 08
# connection exception, 40 transaction rollback (serialization, deadlock), 53 insufficient
# resources, 55 lock not available (lock_timeout), 57 operator intervention (shutdown,
# statement timeout), 58 system error; and the session timeouts of class 25.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
_TRANSIENT_STATES = frozenset({"25P03", "25P04"})


def is_transient(exc: BaseException) -> bool:
    """True for a lost or refused connection, a server going down, a timeout: reconnect
    and go on. False for errors about the data: a value the driver cannot load (such as
    a timestamp of 'infinity', which psycopg reports as DataError without SQLSTATE) or a
    statement the server rejects for what a row holds. Taking those for a lost connection
    would reconnect forever and meet the same row again."""
    if isinstance(exc, (OSError, TimeoutError, Unreachable)):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    if exc.sqlstate is None:
        # Raised by the client: a broken or closed connection is transient, a value the
        # loader rejects (DataError) is not.
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return exc.sqlstate[:2] in _TRANSIENT_CLASSES or exc.sqlstate in _TRANSIENT_STATES
