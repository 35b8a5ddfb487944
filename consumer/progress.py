"""Progress of the replay's build, for an operator watching it: what a report holds and how
it is drawn (one line updated in place on a terminal, a log line now and then elsewhere)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

import msgspec

# Progress lines are the replay's: logged under its name, as they always were.
log = logging.getLogger("consumer.replay")


class Progress(msgspec.Struct, frozen=True):
    """Where the build stands. `phase`: 'build' while folding the log, 'done' at its end."""

    phase: str
    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return max(self.total - self.done, 0) / rate if rate > 0 else None

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta
        tail = (
            f"ETA {clock(eta)}"
            if self.phase == "build" and eta is not None
            else f"in {clock(self.elapsed)}"
        )
        return (
            f"replay: {self.done:,} of {self.total:,} rows ({min(pct, 100.0):.1f}%), "
            f"{self.rate:,.0f} rows/s, {tail}"
        )


ProgressFn = Callable[[Progress], None]


def clock(seconds: float) -> str:
    """A duration as m:ss, or h:mm:ss from an hour on (rounded to the second)."""
    s = int(seconds + 0.5)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class ProgressPrinter:
    """On a terminal, one line updated in place; otherwise a log line every `interval` s.
    The final report ('done') is always drawn."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self._last = float("-inf")

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.phase == "done"
        if not final and now - self._last < self.interval:
            return
        self._last = now
        if self.tty:
            # \033[K clears what a longer previous line left behind.
            self.stream.write("\r" + p.line() + "\033[K" + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("%s", p.line())
