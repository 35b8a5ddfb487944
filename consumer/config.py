"""Configuration from flags and the environment, checked once at start-up."""

from __future__ import annotations

import os

import msgspec
from psycopg.conninfo import conninfo_to_dict

from .errors import ConfigError

DSN_ENV = "SYNC_DATABASE_URL"


class Settings(msgspec.Struct, kw_only=True):
    database_url: str
    batch_size: int = 2000
    batch_max_wait: float = 0.0  # seconds a batch may wait to fill; a lone row goes at once
    safety_poll: float = 30.0  # seconds between polls that cover a lost doorbell
    idle_probe: float = 5.0  # seconds of silence before the listener probes its connection
    max_row_bytes: int = 1_000_000
    reconnect_max: float = 30.0
    metrics_port: int = 9464
    lag_threshold: float = 30.0
    scheduler: bool = True
    max_sleep: float = 60.0


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
