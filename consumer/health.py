"""Liveness/readiness state shared by the listener, the applier, the scheduler and the HTTP
server. No I/O.

Progress, not sockets: each loop calls `beat(loop)` when it completes a cycle, and arms a
bound with `expect(loop, seconds)` while it is supposed to run. /healthz turns 503 when an
armed loop has not beaten within its bound: a connection that hangs without closing is
then visible even though no socket error was raised.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

APPLY = "apply"
SCHEDULER = "scheduler"

STARTING = "starting"
STANDBY = "standby"
LEADER = "leader"


@dataclass
class Health:
    """Mutable state; writers set fields, /healthz reads status().

    Starts disconnected, so the consumer reports unavailable until the listener is up.
    """

    listener_connected: bool = False
    lag_seconds: float = 0.0
    lag_threshold_seconds: float = 30.0
    last_error: str | None = None
    role: str = STARTING
    # loop -> (bound in seconds, monotonic time of its last completed cycle)
    loops: dict[str, tuple[float, float]] = field(default_factory=dict)
    clock: Any = time.monotonic

    def expect(self, loop: str, bound: float) -> None:
        """`loop` now runs and must complete a cycle at least every `bound` seconds."""
        self.loops[loop] = (bound, self.clock())

    def beat(self, loop: str) -> None:
        """`loop` completed a cycle (ignored for a loop that is not armed)."""
        armed = self.loops.get(loop)
        if armed is not None:
            self.loops[loop] = (armed[0], self.clock())

    def release(self, loop: str) -> None:
        """`loop` stopped on purpose (a standby does not decide): no bound any more."""
        self.loops.pop(loop, None)

    def stalled(self) -> list[str]:
        """One reason per armed loop past its bound."""
        now = self.clock()
        return [
            f"{loop} loop has not completed a cycle for {now - last:.1f} s (bound {bound:g} s)"
            for loop, (bound, last) in sorted(self.loops.items())
            if now - last > bound
        ]

    def status(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body): 200 when connected, lag below the threshold and every
        loop within its bound, else 503 with the reason."""
        now = self.clock()
        body: dict[str, Any] = {
            "role": self.role,
            "listener_connected": self.listener_connected,
            # JSON has no NaN/inf: report a non-finite lag as null.
            "lag_seconds": self.lag_seconds if math.isfinite(self.lag_seconds) else None,
            "last_cycle_seconds_ago": {
                loop: round(now - last, 3) for loop, (_, last) in sorted(self.loops.items())
            },
            "last_error": self.last_error,
        }
        if not self.listener_connected:
            return 503, {"status": "unavailable", "reason": "listener disconnected", **body}
        if stalled := self.stalled():
            return 503, {"status": "unavailable", "reason": "; ".join(stalled), **body}
        # `not <` so that a NaN lag counts as unhealthy too.
        if not self.lag_seconds < self.lag_threshold_seconds:
            reason = f"apply lag {self.lag_seconds:.1f} s exceeds {self.lag_threshold_seconds:g} s"
            return 503, {"status": "unavailable", "reason": reason, **body}
        return 200, {"status": "ok", **body}
