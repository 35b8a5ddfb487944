"""Runs benchmark (issue 8): run throughput over 1, 2 and 4 `consumer run` processes, and
the time from a mission's nextRunAt to its iteration's write-back row.

Each round starts P processes on a fresh database (one leader, P-1 standbys; every one
runs up to --max-runs missions at once), with a stub planner in this process that answers
every request after --delay seconds (200 ms). Then:

1. throughput: N legacy missions (no agent, so no concurrency gate) due at once are
   written to the log in one transaction; runs/s = N / (last `done` - first claim), from
   the ledger's own times;
2. latency: M missions due at staggered instants a few seconds ahead, one every 100 ms;
   for each, the write-back row's created_at - nextRunAt (server clock for both; the
   planner's delay is part of it).

Process counts are interleaved over --rounds rounds (1, 2, 4, 1, 2, 4, ...), and medians
are reported with the ratio to one process, measured side by side in the same run.

    python -m bench.bench_runs [--missions 240] [--max-runs 4] [--delay 0.2] [--rounds 2]
                               [--processes 1,2,4] [--database-url URL] [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from bench.common import (
    base_parser,
    command,
    machine_info,
    median,
    note,
    percentile,
    print_table,
    record,
    section,
    server,
    verdict,
)
from consumer.iteration import iso_ms
from tests.planner_stub import PlannerStub

KEY = "bench-key"
INSERT = """INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id)
    VALUES (%s, 'ai', 'aiMissions', %s, %s, 'insert', %s::jsonb, '{}'::jsonb, 'bench')"""


def start(dsn: str, stub: PlannerStub, processes: int, max_runs: int) -> list[subprocess.Popen]:
    env = {**os.environ, "SYNC_DATABASE_URL": dsn, "OTEL_TRACES_EXPORTER": "none",
           "MANA_LLM_URL": stub.url, "MANA_LLM_API_KEY": KEY, "MANA_LLM_TIMEOUT": "30",
           "LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "consumer", "run", "--metrics-port", "0",
           "--max-runs", str(max_runs), "--run-poll", "0.2"]
    command(["consumer", *cmd[3:]])
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for _ in range(processes)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


def wait(conn: psycopg.Connection, query: str, params: Any, target: int, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        row = conn.execute(query, params).fetchone()
        if row and row[0] >= target:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{query!r} reached {row[0] if row else None} of {target}")
        time.sleep(0.05)


def write(conn: psycopg.Connection, prefix: str, due: list[datetime]) -> None:
    with conn.transaction():
        conn.cursor().executemany(INSERT, [
            (str(uuid.uuid4()), f"{prefix}-{i:04d}", f"user-{i % 7}",
             json.dumps({"title": f"{prefix} {i}", "state": "active",
                         "objective": "benchmark", "nextRunAt": iso_ms(at)}))
            for i, at in enumerate(due)])


def one_round(srv: Any, template: str, processes: int, args: Any) -> dict[str, Any]:
    with PlannerStub(json.dumps({"summary": "ok", "steps": []}), delay=args.delay) as stub, \
            srv.scratch(template, tag="runs") as dsn:
        procs = start(dsn, stub, processes, args.max_runs)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                # Up: the leader projected a probe, and every process has its connections.
                write(conn, "probe", [datetime.now(UTC) + timedelta(days=1)])
                wait(conn, "SELECT count(*) FROM mana_ai.mission_snapshots", None, 1, 60)
                time.sleep(2.0)

                n = args.missions
                write(conn, "thr", [datetime.now(UTC) - timedelta(seconds=1)] * n)
                wait(conn, "SELECT count(*) FROM mana_ai.dispatch_ledger WHERE state = 'done'",
                     None, n, 600)
                span, owners = conn.execute(
                    """SELECT extract(epoch FROM max(finished_at) - min(decided_at)),
                              count(DISTINCT lease_owner)
                       FROM mana_ai.dispatch_ledger""").fetchone() or (None, 0)

                m = args.latency
                base = datetime.now(UTC) + timedelta(seconds=3)
                write(conn, "lat", [base + timedelta(seconds=0.1 * i) for i in range(m)])
                wait(conn, "SELECT count(*) FROM mana_ai.dispatch_ledger WHERE state = 'done'",
                     None, n + m, 120)
                lat = [float(r[0]) for r in conn.execute(
                    """SELECT extract(epoch FROM c.created_at - l.due_at)
                       FROM public.sync_changes c
                       JOIN mana_ai.dispatch_ledger l
                         ON l.mission_id = c.record_id AND l.user_id = c.user_id
                       WHERE c.client_id = 'mana-ai-runner' AND c.record_id LIKE 'lat-%%'"""
                ).fetchall()]
                iterations = conn.execute(
                    "SELECT count(*) FROM public.sync_changes WHERE client_id = 'mana-ai-runner'"
                ).fetchone()
        finally:
            stop(procs)
    return {
        "processes": processes, "runs_per_s": n / float(span) if span else float("nan"),
        "owners": owners, "latency_s": lat, "iterations": iterations[0] if iterations else 0,
        "expected": n + m, "requests": len(stub.requests),
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--missions", type=int, default=240)
    parser.add_argument("--latency", type=int, default=40, help="missions of the latency phase")
    parser.add_argument("--max-runs", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.2, help="stub planner answer time (s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", default="1,2,4")
    args = parser.parse_args(argv)
    if args.quick:
        args.missions, args.latency, args.rounds = 60, 10, 1
    counts = [int(x) for x in args.processes.split(",")]
    section("runs: throughput over processes, nextRunAt -> write-back")
    with server(args.database_url) as srv:
        print_table("machine", ["", ""], machine_info(srv))
        template = srv.migrated_template("runs_tpl")
        results: list[dict[str, Any]] = []
        try:
            for r in range(args.rounds):
                for p in counts:
                    res = one_round(srv, template, p, args)
                    print(f"   round {r + 1}, {p} process(es): {res['runs_per_s']:.1f} runs/s, "
                          f"{res['owners']} ran some", flush=True)
                    results.append(res)
        finally:
            srv.drop_database(template)
    rows = []
    by_p: dict[int, dict[str, Any]] = {}
    for p in counts:
        mine = [x for x in results if x["processes"] == p]
        rate = median([x["runs_per_s"] for x in mine])
        lat = [v for x in mine for v in x["latency_s"]]
        by_p[p] = {"rate": rate, "p50": percentile(lat, 50), "p99": percentile(lat, 99)}
        rows.append((f"{p} process(es)", rate, rate / by_p[counts[0]]["rate"],
                     median([x["owners"] for x in mine]), by_p[p]["p50"] * 1e3,
                     by_p[p]["p99"] * 1e3))
    print_table(
        f"{args.missions} due missions, stub planner {args.delay * 1e3:.0f} ms, "
        f"--max-runs {args.max_runs}; median of {args.rounds} round(s)",
        ["", "runs/s", f"x {counts[0]} proc", "processes that ran", "due->write-back p50 ms",
         "p99 ms"], rows)
    note("throughput: first claim to last done, from the ledger; latency: write-back row's "
         "created_at - nextRunAt over the staggered phase (the planner's answer time included)")
    note("2 cores shared by every process and PostgreSQL: beyond ~2 processes the machine, not "
         "the design, bounds the growth")
    record("runs", results)
    exact = all(x["iterations"] == x["expected"] for x in results)
    verdict("every due occurrence got exactly one iteration", exact)
    if len(counts) > 1:
        last = counts[-1]
        verdict(f"throughput grows with processes ({last} vs {counts[0]}: "
                f"x{by_p[last]['rate'] / by_p[counts[0]]['rate']:.2f})",
                by_p[last]["rate"] > 1.5 * by_p[counts[0]]["rate"])
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
