"""The shared transaction shapes: a batch retried row by row only for what a row can cause."""

from __future__ import annotations

import logging

import pytest

from consumer.errors import ConfigError
from consumer.txn import whole_or_by_row


@pytest.mark.anyio
async def test_a_batch_that_fails_for_a_row_goes_again_row_by_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[bool] = []

    async def attempt(by_row: bool) -> str:
        calls.append(by_row)
        if not by_row:
            raise ValueError("a value the server rejects")
        return "by row"

    with caplog.at_level(logging.WARNING, logger="consumer.txn"):
        assert await whole_or_by_row(attempt, "a batch") == "by row"
    assert calls == [False, True]
    assert caplog.messages == [
        "a batch failed (a value the server rejects); applying it row by row"
    ]


@pytest.mark.anyio
async def test_a_whole_batch_that_works_is_not_repeated() -> None:
    calls: list[bool] = []

    async def attempt(by_row: bool) -> int:
        calls.append(by_row)
        return 7

    assert await whole_or_by_row(attempt, "a batch") == 7
    assert calls == [False]


@pytest.mark.anyio
async def test_errors_that_are_no_rows_fault_propagate_at_once() -> None:
    calls: list[bool] = []

    async def attempt(by_row: bool) -> None:
        calls.append(by_row)
        raise ConfigError("rows hidden by row level security")

    with pytest.raises(ConfigError):
        await whole_or_by_row(attempt, "a batch")
    assert calls == [False]
