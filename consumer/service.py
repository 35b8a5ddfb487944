"""`consumer run`: migrations, then the follower, the scheduler and the metrics server in
one anyio task group on the asyncio backend, until SIGINT/SIGTERM."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
from psycopg_pool import AsyncConnectionPool

from . import eventloop, metrics, shutdown, telemetry
from .apply import Applied
from .config import Settings
from .errors import ConfigError, Unreachable
from .health import SCHEDULER, Health
from .listener import FATAL, Follower
from .migrate import migrate
from .planner import Planner, PlannerConfig, planner_config_from_env
from .projection import Projector
from .runner import WRITE_ROLE, Runner
from .sql import load
from .worker import RunWorker

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)

# What ends the service with one line: the follower's fatal errors, and a database that
# cannot be reached at the start (the follower itself reconnects after any later loss).
STOPS = (*FATAL, Unreachable)


def run_service(settings: Settings) -> int:
    planner_config = planner_config_from_env()  # a bad planner setting fails before any work
    if planner_config is None and settings.scheduler:
        log.warning(
            "MANA_LLM_URL is not set: due missions are decided and traced; nothing is claimed "
            "or run until a planner is configured"
        )
    applied = migrate(settings.database_url)
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    try:
        telemetry.setup_tracing(set_global=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        eventloop.run(lambda: serve(settings, planner_config=planner_config))
    except* STOPS as group:
        raise _first_leaf(group) from None
    finally:
        telemetry.shutdown()
    return 0


def settle_heap() -> None:
    """Collect what the start left behind, then freeze the rest (modules, pools, settings)
    out of the collector's reach. A full collection scans every tracked object, and the
    start leaves some 50,000 of them (the libraries' modules and types): about 25 ms on
    these machines, in which no row is applied (a 2,000 rows/s stream sees it in its tail
    latency). Frozen, those objects are never scanned again; what is made later is
    collected as before."""
    gc.collect()
    gc.freeze()


def _first_leaf(error: BaseException) -> BaseException:
    # Task groups nest: unwrap to the error itself so the CLI can print its one line.
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def serve(
    settings: Settings,
    *,
    ready: anyio.Event | None = None,
    dispatcher: Any = None,
    planner_config: PlannerConfig | None = None,
    on_applied: Callable[[Applied], None] | None = None,
) -> None:
    """The service until cancelled or signalled. `on_applied` sees every applied batch
    after its commit (the demo's view measures commit-to-snapshot latency with it)."""
    shutdown.reset()
    health = Health(lag_threshold_seconds=settings.lag_threshold)
    connector = settings.connector()
    async with AsyncExitStack() as stack:
        # The follower's connections are its own. The runs and the scheduler each have a
        # pool and hold a connection only for their short ledger and write-back statements.
        # The runs' pool opens one connection at once: a database that cannot be reached
        # stops the start here, in one line.
        pool = await stack.enter_async_context(connector.open_pool("runner", max_size=6))
        # Only the leader decides: a standby's scheduler pool stays empty.
        decide_pool = (
            await stack.enter_async_context(
                connector.open_pool("scheduler", min_size=0, max_size=2)
            )
            if settings.scheduler
            else None
        )
        if dispatcher is None and planner_config is not None:
            planner = await stack.enter_async_context(Planner(planner_config))
            dispatcher = Runner(pool, planner, tracer=telemetry.tracer())
        projector = Projector(
            batch_size=settings.batch_size,
            max_row_bytes=settings.max_row_bytes,
            on_applied=on_applied,
        )
        follower = Follower(settings, projector, health, connector)
        worker = None
        if dispatcher is not None and settings.scheduler:
            if await write_role_ready(pool):
                worker = RunWorker(
                    pool,
                    dispatcher,
                    max_runs=settings.max_runs,
                    lease=settings.run_lease,
                    attempts=settings.run_attempts,
                    backoff=settings.run_backoff,
                    poll=settings.run_poll,
                    tracer=telemetry.tracer(),
                )
            else:
                log.error(
                    "role %s is missing or not granted to this role: this process runs "
                    "nothing; run `consumer migrate` (or the statement it prints)",
                    WRITE_ROLE,
                )
        settle_heap()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            tg.start_soon(follower.run)
            tg.start_soon(_watch_lag, projector, health)
            if settings.metrics_port:
                from .httpserver import serve_http

                await tg.start(serve_http, settings.metrics_port, health, "0.0.0.0")
            if worker is not None:
                # Runs do not wait for leadership: standbys take runs from the ledger too.
                tg.start_soon(worker.run)
            if settings.scheduler:
                from .scheduler import Scheduler

                def make_scheduler() -> Scheduler:
                    assert decide_pool is not None
                    scheduler = Scheduler(
                        decide_pool,
                        tracer=telemetry.tracer(),
                        max_sleep=settings.max_sleep,
                        # No planner: decide and trace, claim nothing.
                        claims=dispatcher is not None,
                        on_claimed=worker.poke if worker is not None else None,
                    )
                    if worker is not None:
                        worker.on_finished = scheduler.slot_freed
                    return scheduler

                tg.start_soon(
                    _decide_while_leading,
                    follower,
                    projector,
                    health,
                    settings,
                    make_scheduler,
                    on_applied,
                )
            if ready is not None:
                ready.set()
    log.info("stopped")


async def _decide_while_leading(
    follower: Follower,
    projector: Projector,
    health: Health,
    settings: Settings,
    make_scheduler: Callable[[], Scheduler],
    observer: Callable[[Applied], None] | None = None,
) -> None:
    """Decisions only on the leader, only from a projection caught up since it became leader,
    and only until its term ends; then wait for the next term. A fresh scheduler per term:
    nothing it remembered (due keys, last decisions) survives a gap in leadership."""
    while True:
        term = await follower.next_term()
        scheduler = make_scheduler()
        scheduler.leading = lambda term=term: term.valid  # type: ignore[misc]
        scheduler.epoch = term.epoch
        scheduler.on_pass = lambda: health.beat(SCHEDULER)
        projector.on_applied = _both(scheduler.notify_changed, observer)
        health.expect(SCHEDULER, settings.scheduler_bound())
        log.info("deciding as the leader (epoch %d)", term.epoch)
        try:
            async with anyio.create_task_group() as tg:

                tg.start_soon(_cancel_when_set, term.lost, tg.cancel_scope)
                await scheduler.run()  # returns once it finds the term over
                tg.cancel_scope.cancel()
        finally:
            projector.on_applied = observer
            health.release(SCHEDULER)


def _both(
    first: Callable[[Applied], None], second: Callable[[Applied], None] | None
) -> Callable[[Applied], None]:
    if second is None:
        return first

    def both(applied: Applied) -> None:
        first(applied)
        second(applied)

    return both


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def write_role_ready(pool: AsyncConnectionPool) -> bool:
    """The write role exists and this session may SET ROLE to it."""
    async with pool.connection() as conn:
        cur = await conn.execute(load("ledger/write_role_ready"), {"role": WRITE_ROLE})
        row = await cur.fetchone()
    return bool(row and row[0])


async def _watch_lag(projector: Projector, health: Health) -> None:
    while True:
        lag = projector.lag_seconds()
        health.lag_seconds = lag
        metrics.APPLY_LAG.set(lag)
        metrics.CHECKPOINT_AGE.set(projector.checkpoint_age())
        await anyio.sleep(1.0)


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            shutdown.begin()  # work in progress finishes (briefly), then everything stops
            scope.cancel()
            return


__all__ = ["run_service", "serve"]
