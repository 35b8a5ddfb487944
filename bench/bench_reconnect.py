"""Reconnect benchmark (issue 9): a `consumer run --no-scheduler` process follows the log
under mana-sync's traffic while the server is restarted (`pg_ctl -m fast -w restart`).
Each trial times from the moment the server accepts connections again to lag 0: a row
committed right then is in the snapshot (a pass applies everything committed before it,
so every older row is applied too). The consumer's reconnect backoff (full jitter,
doubling from 0.2 s) is part of what is measured.

Needs the embedded server (it restarts it); with --database-url it reports nothing.

    python -m bench.bench_reconnect [--trials 5]
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg

from bench.common import (
    Server,
    base_parser,
    bench_server,
    command,
    note,
    section,
    template_database,
    trials_table,
    wait_until,
)
from bench.procs import FOLLOW, ConsumerProcess

INSERT = """INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id)
    VALUES (%s, 'ai', 'aiMissions', %s, 'bench-user', 'update', %s::jsonb, '{}'::jsonb,
            'bench')"""


def _write(dsn: str, mission_id: str, n: int) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(INSERT, (str(uuid.uuid4()), mission_id, json.dumps({"n": n})))


def _applied(dsn: str, mission_id: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT 1 FROM mana_ai.mission_snapshots WHERE user_id = 'bench-user' "
                "AND mission_id = %s",
                (mission_id,),
            ).fetchone()
    except psycopg.OperationalError:
        return False
    return row is not None


class Writer(threading.Thread):
    """mana-sync's traffic: one row every 10 ms, reconnecting through the restarts."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rows = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                _write(self.dsn, f"w{self.rows % 50}", self.rows)
                self.rows += 1
            except psycopg.OperationalError:
                pass  # the server is restarting
            time.sleep(0.01)


def trials(srv: Server, dsn: str, count: int) -> list[float]:
    command(["consumer", *FOLLOW])
    proc = ConsumerProcess(dsn).start()
    writer = Writer(dsn)
    results: list[float] = []
    try:
        _write(dsn, "warmup", 0)
        wait_until(lambda: _applied(dsn, "warmup"), 60, "the consumer follows", every=0.02)
        writer.start()
        for i in range(count):
            time.sleep(1.0)  # traffic between trials
            srv.restart()  # returns once it accepts connections
            up = time.monotonic()
            probe = f"probe-{i}"
            _write(dsn, probe, i)
            wait_until(lambda p=probe: _applied(dsn, p), 60, f"trial {i}: lag 0", every=0.02)
            took = time.monotonic() - up
            results.append(took)
            print(f"   trial {i + 1}: {took * 1000:.0f} ms", flush=True)
            if not proc.alive():
                raise RuntimeError(f"the consumer exited:\n{proc.output()[-2000:]}")
    finally:
        writer.stopping.set()
        writer.join(10)
        proc.stop()
    note(f"{writer.rows:,} rows written during the trials")
    return results


def run(srv: Server, count: int) -> int:
    if srv.embedded is None:
        note("reconnect: skipped, it restarts the server and needs the embedded one")
        return 0
    with template_database(srv, "reconnect") as name:
        section(f"reconnect: {count} trials (pg_ctl restart: server up -> lag 0)")
        results = trials(srv, srv.dsn_for(name), count)
    trials_table(f"reconnect after pg_ctl restart over {count} trials (ms, server up -> "
                 "lag 0)", "reconnect_ms", results)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--trials", type=int, default=5, help="trials (5)")
    args = parser.parse_args(argv)
    count = min(args.trials, 2) if args.quick else args.trials
    with bench_server(args) as srv:
        return run(srv, count)


if __name__ == "__main__":
    raise SystemExit(main())
