"""Tests here run without PostgreSQL: `pytest tests/unit` on a machine with no server.

The database fixtures of tests/conftest.py start a server only when a test asks for one;
these overrides turn such a request from tests/unit into a clear error instead (a test that
needs the database belongs in tests/, next to the others that do).
"""

from __future__ import annotations

import pytest


def _no_database(request: pytest.FixtureRequest) -> None:
    pytest.fail(
        f"this test asks for the database ({request.fixturename}); tests/unit runs "
        "without PostgreSQL: move the test to tests/",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> None:
    _no_database(request)


@pytest.fixture
def empty_db(request: pytest.FixtureRequest) -> None:
    _no_database(request)


@pytest.fixture(scope="session")
def template_db(request: pytest.FixtureRequest) -> None:
    _no_database(request)


@pytest.fixture
def db(request: pytest.FixtureRequest) -> None:
    _no_database(request)
