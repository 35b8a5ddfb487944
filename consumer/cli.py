"""Command line: `consumer migrate | run | replay | status | demo`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .config import DSN_ENV, Settings, env_float, resolve_dsn
from .errors import CheckpointConflict, ConfigError, PrivilegeError, Unreachable

log = logging.getLogger("consumer")

DESCRIPTION = """\
mana-ai snapshot consumer: follows mana-sync's change log (sync_changes) through
LISTEN/NOTIFY, applies every row of the AI tables to mana_ai's snapshot tables as it
commits, decides which AI missions are due and runs them through the planner.

The database URL comes from --database-url or SYNC_DATABASE_URL. Traces are exported
as configured by the standard OTEL_* variables (OTEL_TRACES_EXPORTER=otlp|console|none,
OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME). The planner is an OpenAI-compatible
endpoint: MANA_LLM_URL, MANA_LLM_API_KEY, MANA_LLM_MODEL; without MANA_LLM_URL due
missions are decided and traced, and nothing is claimed or run.
"""


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        metavar="URL",
        help=f"PostgreSQL URL or conninfo of mana-sync's database (default: ${DSN_ENV})",
    )


def _add_max_row_bytes(p: argparse.ArgumentParser) -> None:
    # run and replay must agree, or they quarantine different rows.
    p.add_argument(
        "--max-row-bytes",
        type=int,
        default=1_000_000,
        help="rows whose data+field_meta are larger are quarantined (1000000); "
        "give run and replay the same value",
    )


def _add_event_loop(p: argparse.ArgumentParser) -> None:
    from .eventloop import CHOICES, ENV

    p.add_argument(
        "--event-loop",
        choices=CHOICES,
        default=None,
        help=f"the asyncio event loop to run on (default: ${ENV}, else uvloop where it is "
        "installed): uvloop spends about a tenth less CPU per applied row; asyncio's own "
        "loop rules the loop out when something misbehaves",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="create or upgrade the mana_ai schema and the log trigger")
    _add_db(p)
    p.add_argument(
        "--with-sync-schema",
        action="store_true",
        help="also create mana-sync's sync_changes table (tests, demo, fresh dev database only)",
    )

    p = sub.add_parser("run", help="run the consumer: projection, scheduler and runner")
    _add_db(p)
    p.add_argument("--no-scheduler", action="store_true", help="run the projection alone")
    _add_event_loop(p)
    _add_max_row_bytes(p)
    p.add_argument("--batch-size", type=int, default=2000, help="rows per apply batch (2000)")
    p.add_argument(
        "--batch-max-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="while rows keep coming, wait this long before each next pass, unrung, so that "
        "it carries more rows: less CPU per row and fewer doorbell rings for mana-sync's "
        "writers, that much more latency (0: read again at once and park between rows; a "
        "lone row after a quiet spell is applied at once either way)",
    )
    p.add_argument(
        "--safety-poll",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="poll interval that covers a lost notification (30)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port for /metrics and /healthz; 0 turns the server off "
        "(default: $METRICS_PORT or 9464)",
    )
    p.add_argument(
        "--max-sleep",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest the scheduler sleeps without looking for due missions (60)",
    )
    p.add_argument(
        "--max-runs",
        type=_positive_int,
        default=16,
        help="missions this process runs at once; every process, standbys too, takes runs "
        "from the ledger up to this (16)",
    )
    p.add_argument(
        "--run-attempts",
        type=_positive_int,
        default=3,
        help="attempts per due occurrence before it is recorded failed (3)",
    )
    p.add_argument(
        "--run-lease",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="lease of a running mission, renewed while it runs; a crashed process's runs "
        "are taken over after it expires (60)",
    )
    p.add_argument(
        "--run-backoff",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="wait before the second attempt, doubled for each further one (30)",
    )
    p.add_argument(
        "--run-poll",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="longest a process waits before looking for runs another process claimed (1)",
    )

    bounds = p.add_argument_group("bounded waits and failover")
    bounds.add_argument(
        "--peer-timeout",
        type=float,
        default=4.0,
        metavar="SECONDS",
        help="a connection silent this long is dead (TCP keepalives and user timeout on both "
        "ends); bounds failover when the leader's host vanishes (4)",
    )
    bounds.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="limit on establishing a connection (5)",
    )
    bounds.add_argument(
        "--statement-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="server-side limit on any statement of the service; 0 for none (30)",
    )
    bounds.add_argument(
        "--idle-probe",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="silence after which the listener probes its connection (5)",
    )
    bounds.add_argument(
        "--probe-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="deadline of the probe and the listener's statements; a miss drops the "
        "connection and, on the leader, its leadership (5)",
    )
    bounds.add_argument(
        "--stall-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an apply step that commits nothing for this long is abandoned, and /healthz "
        "turns 503 when the apply loop (or the scheduler, after --max-sleep plus this) has "
        "not completed a cycle (30)",
    )

    p = sub.add_parser("replay", help="rebuild every snapshot from the start of the log")
    _add_db(p)
    _add_max_row_bytes(p)
    _add_event_loop(p)
    p.add_argument(
        "--batch-size", type=int, default=5000, help="rows per shadow write batch (5000)"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="build the shadow and compare it with the live snapshots without swapping; "
        "exit 1 if they differ",
    )

    p = sub.add_parser("status", help="checkpoint, watermark, lag, quarantine and snapshot counts")
    _add_db(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser(
        "demo",
        help="the whole loop on an embedded PostgreSQL: writer, consumer, local planner, "
        "live view",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=0.0,
        help="stop after this many seconds (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="delete the kept data (--data-dir) and start over"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the embedded PostgreSQL keeps its data (.data)",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="use this database instead of the embedded one (it gets the demo's schema)",
    )
    p.add_argument(
        "--traces",
        choices=("console", "otlp", "none"),
        default=None,
        help="where spans go (default: otlp when OTEL_EXPORTER_OTLP_ENDPOINT is set, "
        "else none: the view still shows them)",
    )
    _add_event_loop(p)
    p.add_argument(
        "--plain",
        action="store_true",
        help="plain lines instead of the live view (the default when not on a terminal)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    port = args.metrics_port
    if port is None:
        port = int(env_float("METRICS_PORT", 9464))
    return Settings(
        database_url=resolve_dsn(args.database_url),
        batch_size=args.batch_size,
        batch_max_wait=args.batch_max_wait,
        safety_poll=args.safety_poll,
        max_row_bytes=args.max_row_bytes,
        metrics_port=port,
        scheduler=not args.no_scheduler,
        max_sleep=args.max_sleep,
        peer_timeout=args.peer_timeout,
        connect_timeout=args.connect_timeout,
        statement_timeout=args.statement_timeout,
        idle_probe=args.idle_probe,
        probe_timeout=args.probe_timeout,
        stall_after=args.stall_after,
        max_runs=args.max_runs,
        run_attempts=args.run_attempts,
        run_lease=args.run_lease,
        run_backoff=args.run_backoff,
        run_poll=args.run_poll,
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from .db import connect
    from .migrate import migrate
    from .status import old_rule_states, replay_advice

    notes: list[str] = []
    dsn = resolve_dsn(args.database_url)
    applied = migrate(dsn, with_sync_schema=args.with_sync_schema, notes=notes)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    for note in notes:
        print(note)
    with connect(dsn, role="migrate") as conn:
        advice = replay_advice(old_rule_states(conn))
    if advice:
        print(advice)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .service import run_service

    return run_service(_settings(args))


def cmd_replay(args: argparse.Namespace) -> int:
    from .replay import run_replay

    return run_replay(
        resolve_dsn(args.database_url),
        verify=args.verify,
        batch_size=args.batch_size,
        max_row_bytes=args.max_row_bytes,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from .status import print_status

    return print_status(resolve_dsn(args.database_url), as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        seconds=args.seconds,
        fresh=args.fresh,
        data_dir=args.data_dir,
        database_url=args.database_url,
        traces=args.traces,
        live=False if args.plain else None,
        verbose=args.verbose,
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "migrate": cmd_migrate,
    "run": cmd_run,
    "replay": cmd_replay,
    "status": cmd_status,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        from . import eventloop

        if hasattr(args, "event_loop"):  # the commands that run a loop (not migrate, status)
            eventloop.use(args.event_loop)
        return COMMANDS[args.command](args)
    except (ConfigError, PrivilegeError, Unreachable) as exc:
        print(f"consumer {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except NotImplementedError as exc:
        print(f"consumer {args.command}: not built yet: {exc}", file=sys.stderr)
        return 3
    except CheckpointConflict as exc:
        print(f"consumer {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"consumer {args.command}: interrupted", file=sys.stderr)
        return 130
