"""The CLI without a server: help, and the one-line exit-2 failures of a bad configuration."""

from __future__ import annotations

from tests.helpers import run_cli


def test_cli_unreachable_database_is_one_line_exit_2() -> None:
    result = run_cli("migrate", "--database-url", "postgresql://nowhere:1/x")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot connect" in result.stderr


def test_cli_malformed_and_missing_url_exit_2() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "SYNC_DATABASE_URL"}
    result = run_cli("status", "--database-url", "host=x port", env=env)
    assert result.returncode == 2 and "malformed database URL" in result.stderr
    result = run_cli("migrate", env=env)
    assert result.returncode == 2 and "SYNC_DATABASE_URL" in result.stderr


def test_cli_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("migrate", "run", "replay", "status", "demo", "SYNC_DATABASE_URL"):
        assert name in result.stdout
