"""Versioned migrations: schema/migrations/NNNN_name.sql, each applied once, in its own
transaction, under an advisory lock so replicas booting together do not race."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from . import locks
from .db import connect
from .errors import ConfigError, PrivilegeError
from .sql import schema_dir

log = logging.getLogger(__name__)

T = TypeVar("T")

# A migration's DDL on mana-sync's log (CREATE or DROP TRIGGER) waits for every open
# transaction on the table, and while it waits every new INSERT and SELECT of mana-sync
# queues behind it. So no lock is waited for longer than LOCK_WAIT seconds: the migration's
# transaction rolls back, and is tried again after a pause that lets the queue drain, up
# to LOCK_TRIES times; then the command fails, saying which long transaction to look for.
# The same bound applies, try by try, to the lock that serializes replicas' migrations.
LOCK_WAIT = 5.0
LOCK_TRIES = 12

# Any constant works; it only has to be the same for every replica of this service.
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover() -> list[Migration]:
    found = []
    for path in sorted((schema_dir() / "migrations").iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


def _bookkeeping(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS mana_ai")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS mana_ai.schema_migrations (
               version    INT PRIMARY KEY,
               name       TEXT NOT NULL,
               checksum   TEXT NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
    )


def _exists(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def migrate(
    dsn: str, *, with_sync_schema: bool = False, notes: list[str] | None = None
) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date).

    Also sets up the write role (see `ensure_write_role`); what this role may not do itself
    is appended to `notes` (and logged) as the statement an administrator runs.
    """
    applied_now: list[str] = []
    with connect(dsn, role="migrate", autocommit=True) as conn:
        try:
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false)", (f"{int(LOCK_WAIT * 1000)}ms",)
            )
            # Session lock: held across the per-migration transactions below.
            _bounded(
                lambda: conn.execute("SELECT pg_advisory_lock(%s)", (locks.MIGRATE,)),
                "the migration lock (another consumer is migrating this database)",
            )
            try:
                if with_sync_schema:
                    with conn.transaction():
                        conn.execute((schema_dir() / "sync_changes.sql").read_text())
                if not _exists(conn, "public.sync_changes"):
                    raise ConfigError(
                        "table public.sync_changes does not exist: it belongs to mana-sync; "
                        "start mana-sync first, or pass --with-sync-schema for a dev database"
                    )
                if not _exists(conn, "mana_ai.schema_migrations"):
                    # Only when missing: a role that may not create in mana_ai can still boot
                    # against an up-to-date schema.
                    with conn.transaction():
                        _bookkeeping(conn)
                done = {
                    row[0]: row[1]
                    for row in conn.execute(
                        "SELECT version, checksum FROM mana_ai.schema_migrations"
                    )
                }
                for migration in discover():
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            log.warning(
                                "migration %04d_%s changed after it was applied; not re-run",
                                migration.version,
                                migration.name,
                            )
                        continue
                    _bounded(
                        functools.partial(_apply, conn, migration),
                        f"the tables migration {migration.version:04d}_{migration.name} "
                        "changes (a long transaction holds one: see pg_stat_activity)",
                    )
                    applied_now.append(f"{migration.version:04d}_{migration.name}")
                statement = _bounded(
                    functools.partial(ensure_write_role, conn), "the log, to grant on it"
                )
                if statement is not None:
                    message = (
                        f"role {WRITE_ROLE} is not set up and this role may not do it; "
                        f"an administrator runs: {statement}"
                    )
                    log.warning("%s", message)
                    if notes is not None:
                        notes.append(message)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (locks.MIGRATE,))
        except pgerr.InsufficientPrivilege as exc:
            raise PrivilegeError(_privilege_message(conn, exc)) from None
    return applied_now


# The role the runner's write-back switches to (SET LOCAL ROLE): no login, no BYPASSRLS,
# INSERT on the log and nothing else, so the log's row level security binds the write.
WRITE_ROLE = "mana_ai_writeback"


def ensure_write_role(conn: psycopg.Connection) -> str | None:
    """Create the write role, grant it INSERT on the log and grant it to this role, as far
    as this role may (CREATEROLE, the log's owner). Returns the one statement an
    administrator runs for the rest, or None when nothing is missing."""
    role = sql.Identifier(WRITE_ROLE)
    me_row = conn.execute("SELECT current_user").fetchone()
    me = sql.Identifier(me_row[0] if me_row else "")
    missing: list[sql.Composed] = []

    def attempt(statement: sql.Composed) -> None:
        try:
            with conn.transaction():
                conn.execute(statement)
        except pgerr.DuplicateObject:
            pass  # a replica migrating at the same time created it
        except pgerr.InsufficientPrivilege:
            missing.append(statement)

    def check(query: str) -> bool:
        row = conn.execute(query, {"role": WRITE_ROLE}).fetchone()
        return bool(row and row[0])

    if not check("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s)"):
        attempt(sql.SQL("CREATE ROLE {} NOLOGIN NOBYPASSRLS").format(role))
    exists = check("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s)")
    grant_insert = sql.SQL("GRANT INSERT ON public.sync_changes TO {}").format(role)
    grant_role = sql.SQL("GRANT {} TO {}").format(role, me)
    if not exists:
        missing += [grant_insert, grant_role]
    else:
        if check("SELECT rolbypassrls FROM pg_roles WHERE rolname = %(role)s"):
            log.warning("role %s has BYPASSRLS: row level security does not bind it", WRITE_ROLE)
        if not check("SELECT has_table_privilege(%(role)s, 'public.sync_changes', 'INSERT')"):
            attempt(grant_insert)
        if not check("SELECT pg_has_role(current_user, %(role)s, 'SET')"):
            attempt(grant_role)
    if not missing:
        return None
    if len(missing) == 1:
        return missing[0].as_string(conn) + ";"
    # One statement to paste, whatever is missing.
    body = " ".join(m.as_string(conn) + ";" for m in missing)
    return f"DO $$ BEGIN {body} END $$;"


def _bounded(step: Callable[[], T], what: str) -> T:
    """Run `step` (statements or transactions that may start again, under the session's
    lock_timeout); when a lock wait runs out, try again after a pause, LOCK_TRIES times in
    all."""
    tries = LOCK_TRIES
    for attempt in range(1, tries + 1):
        try:
            return step()
        except pgerr.LockNotAvailable:
            if attempt == tries:
                break
            pause = min(2.0 ** (attempt - 1), 10.0)
            log.warning(
                "waited %g s for %s; trying again in %g s (%d of %d)",
                LOCK_WAIT, what, pause, attempt, tries,
            )
            time.sleep(pause)
    raise ConfigError(
        f"gave up after {tries} waits of {LOCK_WAIT:g} s for {what}; the step that waited "
        "changed nothing: run `consumer migrate` again once the holder is gone"
    )


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    log.info("applying migration %04d_%s", migration.version, migration.name)
    with conn.transaction():
        conn.execute(migration.path.read_text())
        conn.execute(
            "INSERT INTO mana_ai.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.checksum),
        )


def _privilege_message(conn: psycopg.Connection, exc: pgerr.InsufficientPrivilege) -> str:
    role = conn.info.parameter_status("session_authorization") or conn.info.user
    what = (exc.diag.message_primary or str(exc)).strip()
    hint = ""
    if "sync_changes" in what:
        hint = (
            f"; role {role!r} must own public.sync_changes or hold TRIGGER on it "
            f"(GRANT TRIGGER ON public.sync_changes TO {role})"
        )
    elif "schema" in what:
        hint = (
            f"; role {role!r} needs CREATE on schema mana_ai "
            f"(GRANT CREATE ON SCHEMA mana_ai TO {role})"
        )
    elif "database" in what:
        hint = (
            f"; role {role!r} needs CREATE on the database (GRANT CREATE ON DATABASE ... TO {role})"
        )
    return f"migration failed: {what}{hint}"
