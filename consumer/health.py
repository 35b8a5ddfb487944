"""Liveness/readiness state shared by the listener, the applier and the HTTP server. No I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Health:
    """Mutable state; writers set fields, /healthz reads status().

    Starts disconnected, so the consumer reports unavailable until the listener is up.
    """

    listener_connected: bool = False
    lag_seconds: float = 0.0
    lag_threshold_seconds: float = 30.0
    last_error: str | None = None

    def status(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body): 200 when connected and lag below the threshold, else 503."""
        body: dict[str, Any] = {
            "listener_connected": self.listener_connected,
            # JSON has no NaN/inf: report a non-finite lag as null.
            "lag_seconds": self.lag_seconds if math.isfinite(self.lag_seconds) else None,
            "last_error": self.last_error,
        }
        if not self.listener_connected:
            return 503, {"status": "unavailable", "reason": "listener disconnected", **body}
        # `not <` so that a NaN lag counts as unhealthy too.
        if not self.lag_seconds < self.lag_threshold_seconds:
            reason = f"apply lag {self.lag_seconds:.1f} s exceeds {self.lag_threshold_seconds:g} s"
            return 503, {"status": "unavailable", "reason": reason, **body}
        return 200, {"status": "ok", **body}
