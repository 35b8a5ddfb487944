"""Drawing the replay's progress: one updating line on a terminal, a log line now and then
elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from consumer.progress import Progress, ProgressPrinter, clock


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_on_a_terminal_is_one_updating_line() -> None:
    stream = _Stream(tty=True)
    printer = ProgressPrinter(stream)
    printer(Progress("build", 0, 1000, 0.0))
    printer(Progress("build", 500, 1000, 1.0))
    printer(Progress("done", 1000, 1000, 2.0))
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    assert "1,000 of 1,000 rows (100.0%)" in text and "500 rows/s" in text


def test_progress_elsewhere_is_a_log_line_every_few_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    printer = ProgressPrinter(_Stream(tty=False), interval=5.0)
    # Under the replay's logger: what is set there (the benchmark's handler) applies.
    with caplog.at_level(logging.INFO, logger="consumer.replay"):
        printer(Progress("build", 10, 1000, 1.0))
        printer(Progress("build", 20, 1000, 2.0))  # within 5 s: not logged
        printer(Progress("done", 1000, 1000, 3.0))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "10 of 1,000 rows" in lines[0] and "ETA" in lines[0]
    assert "1,000 of 1,000" in lines[1]


def test_progress_rate_and_eta() -> None:
    p = Progress("build", 250, 1000, 5.0)
    assert p.rate == 50.0 and p.eta == 15.0
    assert "ETA 0:15" in p.line()
    done = Progress("done", 1000, 1000, 3725.0)
    assert done.line().endswith("in 1:02:05") and done.eta == 0.0
    assert Progress("build", 0, 0, 0.0).eta is None


def test_clock() -> None:
    assert [clock(s) for s in (0, 0.4, 59.6, 61, 3599, 3600, 36061)] == [
        "0:00", "0:00", "1:00", "1:01", "59:59", "1:00:00", "10:01:01"
    ]
