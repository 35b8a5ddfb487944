"""Configuration from flags and the environment, checked once at start-up."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec
from psycopg.conninfo import conninfo_to_dict

from .errors import ConfigError

if TYPE_CHECKING:
    from .db import Bounds, Connector

DSN_ENV = "SYNC_DATABASE_URL"


class Settings(msgspec.Struct, kw_only=True):
    database_url: str
    batch_size: int = 2000
    # Seconds the follower collects rows while they keep coming (a lone row after a quiet
    # spell goes at once): a pass carries a window's rows, not one.
    batch_max_wait: float = 0.0
    safety_poll: float = 30.0  # seconds between polls that cover a lost doorbell
    idle_probe: float = 5.0  # seconds of silence before the listener probes its connection
    max_row_bytes: int = 1_000_000
    reconnect_max: float = 30.0
    metrics_port: int = 9464
    lag_threshold: float = 30.0
    scheduler: bool = True
    max_sleep: float = 60.0
    # Bounded waits. A connection silent for peer_timeout is dead (TCP keepalives and user
    # timeout, on our side and the server's: the server then frees a vanished leader's lock,
    # which bounds failover); probe_timeout bounds the idle probe and the listener's own
    # statements; an apply pass that commits nothing for stall_after is abandoned, and
    # /healthz reports a loop that has not completed a cycle within its bound.
    connect_timeout: float = 5.0
    peer_timeout: float = 4.0
    statement_timeout: float = 30.0
    probe_timeout: float = 5.0
    stall_after: float = 30.0
    # A standby waits on the leader lock in slices this long (it takes over the moment the
    # lock is free; a slice only bounds how long it goes without proving itself alive).
    lock_wait: float = 2.0
    # Runs: every process runs up to max_runs at once; an occurrence gets run_attempts
    # attempts, backoff run_backoff * 2^(attempt-1) s between them, under a lease of
    # run_lease s renewed while the run lives (a dead process's runs wait this long).
    max_runs: int = 16
    run_attempts: int = 3
    run_lease: float = 60.0
    run_backoff: float = 30.0
    run_poll: float = 1.0  # seconds between looks for runs claimed by another process

    def __post_init__(self) -> None:
        positive = ("idle_probe", "connect_timeout", "peer_timeout", "probe_timeout")
        for name in (*positive, "stall_after", "lock_wait"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        if self.statement_timeout < 0:
            raise ConfigError("statement-timeout must be 0 (none) or positive")

    def bounds(self) -> Bounds:
        from .db import Bounds

        return Bounds(
            connect_timeout=self.connect_timeout,
            peer_timeout=self.peer_timeout,
            statement_timeout=self.statement_timeout,
        )

    def connector(self) -> Connector:
        """The service's connections: this database, these bounds."""
        from .db import Connector

        return Connector(self.database_url, self.bounds())

    def scheduler_bound(self) -> float:
        """The scheduler sleeps up to max_sleep between passes; a pass gets stall_after."""
        return self.max_sleep + self.stall_after


def resolve_dsn(flag: str | None) -> str:
    """The database URL from --database-url, else SYNC_DATABASE_URL; validated, not connected."""
    dsn = flag or os.environ.get(DSN_ENV) or ""
    if not dsn.strip():
        raise ConfigError(f"no database URL: pass --database-url or set {DSN_ENV}")
    try:
        conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg raises ProgrammingError for a malformed string
        raise ConfigError(f"malformed database URL: {first_line(exc)}") from None
    return dsn


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
