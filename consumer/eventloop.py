"""The event loop every long-running command (run, replay, demo) runs on.

uvloop by default: it has asyncio's interface, and the live path spends most of its CPU
in the loop's machinery around each database round trip (a wake-up, a socket wait, a
task step). Measured side by side at 500 rows/s of ours, one row per transaction, uvloop
took about a tenth less client CPU per applied row than asyncio's own loop (see
docs/architecture.md, the armed doorbell: "The event loop"). asyncio's loop stays one option away
(`--event-loop asyncio` or MANA_AI_EVENT_LOOP=asyncio), for a platform without uvloop or
to rule the loop out when something misbehaves.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple

import anyio

from .errors import ConfigError

ENV = "MANA_AI_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_chosen: str | None = None  # set by the command line; else the environment, else default()


def available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def default() -> str:
    return "uvloop" if available() else "asyncio"


def check(name: str, origin: str) -> str:
    """`name` if it is a loop we can run on here, else a ConfigError that says why."""
    if name not in CHOICES:
        raise ConfigError(f"{origin}: unknown event loop {name!r} (one of {', '.join(CHOICES)})")
    if name == "uvloop" and not available():
        raise ConfigError(f"{origin}: uvloop is not installed here; use asyncio")
    return name


def use(name: str | None) -> str:
    """Choose the loop for this process's commands, before any work (a bad choice fails
    at once): `name`, else the environment's, else the default."""
    global _chosen
    _chosen = None
    _chosen = check(name, "--event-loop") if name else chosen()
    return _chosen


def chosen() -> str:
    if _chosen is not None:
        return _chosen
    from_env = os.environ.get(ENV, "").strip()
    return check(from_env, ENV) if from_env else default()


def backend_options(name: str | None = None) -> dict[str, Any]:
    return {"use_uvloop": (name or chosen()) == "uvloop"}


def run(func: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
    """anyio.run on the chosen loop."""
    return anyio.run(func, *args, backend="asyncio", backend_options=backend_options())
