"""Failover benchmark (issue 9): two `consumer run` processes on one database, the leader
and a hot standby. Each trial SIGKILLs the leader, writes a mission that is already due,
and times the standby's first decision (its log line for that mission) from the kill.
The killed process is then started again as the next standby. Goal: within 5 s.

A writer keeps mana-sync's traffic going through every trial (paused missions: rows to
apply, nothing to decide), so the new leader also has a backlog to catch up on before it
may decide.

    python -m bench.bench_failover [--trials 10] [--database-url URL]
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

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
    verdict,
    wait_until,
)
from bench.procs import ConsumerProcess

GOAL_S = 5.0
INSERT = """INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id, created_at)
    VALUES (%s, 'ai', 'aiMissions', %s, 'bench-user', 'update', %s::jsonb, '{}'::jsonb,
            'bench', now())"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(conn: psycopg.Connection, mission_id: str, **fields: object) -> None:
    conn.execute(INSERT, (str(uuid.uuid4()), mission_id, json.dumps(fields)))


class Replica(ConsumerProcess):
    """One `consumer run` process; its output lines are kept with their arrival time."""

    def __init__(self, dsn: str) -> None:
        self.port = _free_port()
        command(["consumer", "run", "--metrics-port", "PORT", "--max-sleep", "5"])
        # Decisions only (no MANA_LLM_URL): the planner is not what we time.
        super().__init__(dsn, command=("run", "--metrics-port", str(self.port),
                                       "--max-sleep", "5"),
                         env={"MANA_LLM_URL": None}, lines=True)
        self.start()

    def role(self) -> str | None:
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read()).get("role")
        except urllib.error.HTTPError as err:
            return json.loads(err.read()).get("role")
        except OSError:
            return None

    def decided_at(self, mission_id: str) -> float | None:
        return self.line_at(f"mission {mission_id} of")


class Writer(threading.Thread):
    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rows = dsn, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                _write(conn, f"w{self.rows % 50}", state="paused", n=self.rows)
                self.rows += 1
                time.sleep(0.01)


def trials(dsn: str, count: int) -> list[float]:
    due = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    leader = Replica(dsn)
    wait_until(lambda: leader.role() == "leader", 60, "the first process leads")
    standby = Replica(dsn)
    wait_until(lambda: standby.role() == "standby", 60, "the second process stands by")
    writer = Writer(dsn)
    writer.start()
    results: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(count):
                time.sleep(1.0)  # traffic between trials
                mission_id = f"failover-{i}"
                assert leader.proc is not None
                leader.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                _write(conn, mission_id, state="active", objective="bench", nextRunAt=due)
                wait_until(lambda m=mission_id, r=standby: r.decided_at(m) is not None, 30,
                           f"trial {i}: the standby decides")
                took = (standby.decided_at(mission_id) or killed) - killed
                results.append(took)
                print(f"   trial {i + 1}: {took * 1000:.0f} ms", flush=True)
                leader.stop()
                leader, standby = standby, Replica(dsn)
                wait_until(lambda r=standby: r.role() == "standby", 60,
                           "the restarted one stands by")
    finally:
        writer.stopping.set()
        writer.join(10)
        leader.stop()
        standby.stop()
    note(f"{writer.rows:,} rows written by the writer during the trials")
    return results


def run(srv: Server, count: int) -> int:
    with template_database(srv, "failover") as name:
        section(f"failover: {count} trials (leader SIGKILL -> the standby's first decision)")
        results = trials(srv.dsn_for(name), count)
    ms = trials_table(f"failover over {count} trials (ms)", "failover_ms", results)
    ok = max(results) < GOAL_S
    verdict(f"failover within {GOAL_S:g} s in every trial (max {max(ms):.0f} ms)", ok)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--trials", type=int, default=10, help="trials (10)")
    args = parser.parse_args(argv)
    count = min(args.trials, 1) if args.quick else args.trials
    with bench_server(args) as srv:
        return run(srv, count)


if __name__ == "__main__":
    raise SystemExit(main())
