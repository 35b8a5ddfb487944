"""The CLI without a server: help, and the one-line exit-2 failures of a bad configuration."""

from __future__ import annotations

import pytest

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


def test_cli_bad_event_loop_fails_before_any_work() -> None:
    import os

    env = dict(os.environ, MANA_AI_EVENT_LOOP="trio")
    # The database is unreachable: the loop's check must come first, or this says so.
    result = run_cli("run", "--database-url", "postgresql://nowhere:1/x", env=env)
    assert result.returncode == 2
    assert "MANA_AI_EVENT_LOOP: unknown event loop 'trio'" in result.stderr
    result = run_cli("replay", "--event-loop", "trio")
    assert result.returncode == 2 and "invalid choice: 'trio'" in result.stderr
    # A command that runs no loop does not care: it fails (exit 2) only for its own reason.
    result = run_cli("status", "--database-url", "postgresql://nowhere:1/x", env=env)
    assert "event loop" not in result.stderr and "nowhere" in result.stderr, result.stderr


def test_event_loop_choice_and_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumer import eventloop
    from consumer.errors import ConfigError

    monkeypatch.delenv(eventloop.ENV, raising=False)
    try:
        assert eventloop.use(None) == "uvloop"  # installed with the package: the default
        assert eventloop.backend_options() == {"use_uvloop": True}
        monkeypatch.setenv(eventloop.ENV, "asyncio")
        assert eventloop.use(None) == "asyncio"
        assert eventloop.backend_options() == {"use_uvloop": False}
        assert eventloop.use("uvloop") == "uvloop"  # the command line wins

        async def loop_module() -> str:
            import asyncio

            return type(asyncio.get_running_loop()).__module__

        assert eventloop.run(loop_module).startswith("uvloop")
        eventloop.use("asyncio")
        assert eventloop.run(loop_module).startswith("asyncio")
        monkeypatch.setattr(eventloop, "available", lambda: False)
        with pytest.raises(ConfigError, match="uvloop is not installed here"):
            eventloop.use("uvloop")
        monkeypatch.delenv(eventloop.ENV)
        assert eventloop.use(None) == "asyncio"  # no uvloop on this platform: asyncio's
    finally:
        eventloop._chosen = None
