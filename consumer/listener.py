"""Follow the log: LISTEN on a dedicated autocommit connection, apply on a second one (the
work connection) at every doorbell, probe when idle, poll now and then in case a doorbell
was lost, and come back with capped exponential backoff and jitter after any connection
loss.

Only one consumer per database applies the journal: the leader holds a session advisory
lock on its listener connection. Hot standbys wait for it; when the leader's connection
dies, the lock goes with it and a standby takes over from the durable checkpoint.
"""

from __future__ import annotations

import logging
import random
import time

import anyio
import psycopg

from . import metrics
from .config import Settings, first_line
from .db import aconnect
from .errors import CheckpointConflict, ConfigError, PrivilegeError
from .health import Health
from .projection import Projector

log = logging.getLogger(__name__)

CHANNEL = "mana_ai_changes"
LEADER_LOCK_KEY = 0x6D616E61_6C64  # "mana" "ld": one applier per database
FATAL = (ConfigError, CheckpointConflict, PrivilegeError)
PRUNE_EVERY = 10.0  # seconds between journal prunes


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter, so a fleet does not reconnect in lock step."""
    return random.uniform(0, min(cap, base * 2**attempt))


class Follower:
    def __init__(self, settings: Settings, projector: Projector, health: Health) -> None:
        self.settings = settings
        self.projector = projector
        self.health = health
        self.leading = anyio.Event()  # set once this process holds the leader lock
        self.attempt = 0

    async def run(self) -> None:
        """Until cancelled. Transient failures are retried; configuration errors raise."""
        while True:
            try:
                await self._session()
            except FATAL:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._lost(exc)
            delay = backoff_delay(self.attempt, cap=self.settings.reconnect_max)
            self.attempt += 1
            log.info("reconnecting in %.2f s (attempt %d)", delay, self.attempt)
            await anyio.sleep(delay)

    def _lost(self, exc: BaseException) -> None:
        if self.health.listener_connected:
            metrics.LISTENER_RECONNECTS.inc()
        self.health.listener_connected = False
        self.health.last_error = first_line(exc)
        metrics.LISTENER_CONNECTED.set(0)
        self.projector.forget()
        log.warning("connection lost: %s", first_line(exc))

    async def _session(self) -> None:
        dsn = self.settings.database_url
        async with (
            await aconnect(dsn, autocommit=True) as conn,
            await aconnect(dsn, autocommit=True) as work,
        ):
            await self._become_leader(conn)
            # The projection is derived state: after a crash it is re-applied from the log,
            # so its commits need not wait for the WAL flush. WAL order still keeps each
            # checkpoint with its snapshot writes. (The scheduler's ledger stays durable:
            # it runs on the pool, not here.)
            await work.execute("SET synchronous_commit = off")
            # LISTEN first, then catch up: a row committed in between rings the bell.
            await conn.execute(f"LISTEN {CHANNEL}")
            self.health.listener_connected = True
            self.health.last_error = None
            metrics.LISTENER_CONNECTED.set(1)
            await self.projector.bootstrap(work)
            await self._catch_up(work)
            self.attempt = 0
            log.info(
                "following the log (checkpoint %s)",
                self.projector.cp and self.projector.cp.applied_below,
            )
            last_poll = last_prune = time.monotonic()
            while True:
                rang = False
                async for _ in conn.notifies(timeout=self.settings.idle_probe, stop_after=1):
                    rang = True
                now = time.monotonic()
                if rang:
                    self.projector.ring()
                    if self.settings.batch_max_wait > 0:
                        await anyio.sleep(self.settings.batch_max_wait)
                else:
                    await conn.execute("SELECT 1")  # idle: prove the connection is alive
                    if now - last_poll < self.settings.safety_poll:
                        continue
                await self._catch_up(work)
                last_poll = now
                if now - last_prune >= PRUNE_EVERY:
                    pruned = await self.projector.prune(work)
                    if pruned:
                        log.debug("pruned %d journal rows", pruned)
                    last_prune = now

    async def _become_leader(self, conn: psycopg.AsyncConnection) -> None:
        waiting_logged = False
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
            row = await cur.fetchone()
            if row and row[0]:
                if waiting_logged:
                    log.info("standby: the leader is gone; taking over")
                self.leading.set()
                return
            if not waiting_logged:
                log.info("standby: another consumer is applying this log; waiting to take over")
                waiting_logged = True
            self.health.listener_connected = True  # a healthy standby
            await anyio.sleep(self.settings.idle_probe)

    async def _catch_up(self, work: psycopg.AsyncConnection) -> None:
        await self.projector.catch_up(work)
        self.health.lag_seconds = 0.0
