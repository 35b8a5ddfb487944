"""Follow the log: LISTEN on a dedicated autocommit connection, catch up, apply on every
doorbell, probe when idle, poll now and then in case a doorbell was lost, and come back
with capped exponential backoff and jitter after any connection loss.

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
from psycopg_pool import AsyncConnectionPool

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
    def __init__(
        self, settings: Settings, projector: Projector, pool: AsyncConnectionPool, health: Health
    ) -> None:
        self.settings = settings
        self.projector = projector
        self.pool = pool
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
        async with await aconnect(self.settings.database_url, autocommit=True) as conn:
            await self._become_leader(conn)
            # LISTEN first, then catch up: a row committed in between rings the bell.
            await conn.execute(f"LISTEN {CHANNEL}")
            self.health.listener_connected = True
            self.health.last_error = None
            metrics.LISTENER_CONNECTED.set(1)
            async with self.pool.connection() as work:
                await self.projector.bootstrap(work)
            await self._catch_up()
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
                await self._catch_up()
                last_poll = now
                if now - last_prune >= PRUNE_EVERY:
                    await self._prune()
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

    async def _catch_up(self) -> None:
        async with self.pool.connection() as work:
            await self.projector.catch_up(work)
        self.health.lag_seconds = 0.0

    async def _prune(self) -> None:
        async with self.pool.connection() as work:
            pruned = await self.projector.prune(work)
            await work.commit()
        if pruned:
            log.debug("pruned %d journal rows", pruned)
