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

    python -m bench.bench_runs [--missions 160] [--max-runs 4] [--delay 0.2] [--rounds 2]
                               [--processes 1,2,4] [--profile DIR] [--database-url URL]
                               [--quick]
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg

from bench.common import (
    base_parser,
    bench_template,
    command,
    median,
    note,
    percentile,
    print_table,
    record,
    section,
    verdict,
)
from bench.fixtures import due_mission
from bench.procs import TICK, ConsumerProcess, postmaster_of, proc_cpu, server_cpu
from tests.planner_stub import PlannerStub

KEY = "bench-key"
INSERT = """INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id)
    VALUES (%s, 'ai', 'aiMissions', %s, %s, 'insert', %s::jsonb, '{}'::jsonb, 'bench')"""


# --------------------------------------------------------------------------- CPU per run

def machine_busy() -> float | None:
    """CPU seconds the whole machine spent busy so far (every process, everyone's)."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    return (sum(cpu[:8]) - idle) / TICK


class CpuSample(msgspec.Struct):
    at: float
    consumers: list[float | None]
    backends: dict[int, float]  # the consumers' server processes, by pid
    server: float | None  # the postmaster and every child, exited ones included
    bench: float  # this process: the stub planner's threads and the polling
    bench_backend: float  # the server process of the bench's own connection
    machine: float | None


def sample_cpu(conn: psycopg.Connection, procs: list[ConsumerProcess],
               postmaster: int | None) -> CpuSample:
    rows = conn.execute(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND application_name LIKE 'mana-ai%%'"""
    ).fetchall()
    backends = {pid: c for (pid,) in rows if (c := proc_cpu(pid)) is not None}
    server = server_cpu(postmaster) if postmaster is not None else None
    own = conn.execute("SELECT pg_backend_pid()").fetchone()
    t = os.times()
    return CpuSample(time.monotonic(), [proc_cpu(p.pid) for p in procs], backends,
                     server, t.user + t.system,
                     (proc_cpu(own[0]) or 0.0) if own else 0.0, machine_busy())


def cpu_split(a: CpuSample, b: CpuSample, runs: int) -> dict[str, float]:
    """CPU milliseconds per run between two samples, by where it was spent."""
    consumers = sum((y or 0.0) - (x or 0.0) for x, y in zip(a.consumers, b.consumers,
                                                              strict=True))
    backends = sum(c - a.backends.get(pid, 0.0) for pid, c in b.backends.items())
    out = {
        "consumer processes": consumers,
        "their server backends": backends,
        "other server processes": (
            b.server - a.server - backends - (b.bench_backend - a.bench_backend)
            if a.server is not None and b.server is not None else math.nan),
        "bench (stub planner, polling + its backend)": (
            b.bench - a.bench + b.bench_backend - a.bench_backend),
    }
    out["total"] = sum(v for v in out.values() if not math.isnan(v))
    if a.machine is not None and b.machine is not None:
        out["whole machine (everyone)"] = b.machine - a.machine
    return {k: v * 1e3 / runs for k, v in out.items()} | {"window_s": b.at - a.at}


def py_spy() -> str | None:
    """py-spy, if installed (not a dependency: `pip install py-spy` to profile)."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


def start_profiles(procs: list[ConsumerProcess], out: str | None,
                   tag: str) -> list[subprocess.Popen]:
    """py-spy sampling each consumer (collapsed stacks, idle waits left out) until stopped."""
    spy = py_spy() if out else None
    if out is None:
        return []
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    os.makedirs(out, exist_ok=True)
    cmd = [spy, "record", "--format", "raw", "--rate", "250", "--nolineno"]
    command(["py-spy", *cmd[1:], "--pid", "PID", "--output", "FILE"])
    return [subprocess.Popen([*cmd, "--pid", str(p.pid), "--output",
                              os.path.join(out, f"{tag}-consumer{i}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, p in enumerate(procs)]


def stop_profiles(spies: list[subprocess.Popen]) -> None:
    for s in spies:
        s.send_signal(signal.SIGINT)
    for s in spies:
        try:
            s.wait(timeout=30)
        except subprocess.TimeoutExpired:
            s.kill()


def postmaster_pid(conn: psycopg.Connection) -> int | None:
    """The server's postmaster, when it runs on this machine (else no server split)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return None if row is None else postmaster_of(row[0])


def start(dsn: str, stub: PlannerStub, processes: int, max_runs: int) -> list[ConsumerProcess]:
    args = ["run", "--metrics-port", "0", "--max-runs", str(max_runs), "--run-poll", "0.2"]
    command(["consumer", *args])
    env = {"MANA_LLM_URL": stub.url, "MANA_LLM_API_KEY": KEY, "MANA_LLM_TIMEOUT": "30",
           "LOG_LEVEL": "WARNING"}
    return [ConsumerProcess(dsn, command=args, env=env).start() for _ in range(processes)]


def stop(procs: list[ConsumerProcess]) -> None:
    for p in procs:
        if p.alive():
            assert p.proc is not None
            p.proc.terminate()
    for p in procs:
        p.stop(timeout=20)


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
             json.dumps(due_mission(f"{prefix}-{i:04d}", at)))
            for i, at in enumerate(due)])


def one_round(srv: Any, template: str, processes: int, args: Any,
              tag: str = "") -> dict[str, Any]:
    # Not keep-alive: with it, rounds of 2 and 4 processes stalled for ~30 s (one request
    # timing out, as it seems; not yet understood), so each request connects anew here.
    with PlannerStub(json.dumps({"summary": "ok", "steps": []}), delay=args.delay) as stub, \
            srv.scratch(template, tag="runs") as dsn:
        procs = start(dsn, stub, processes, args.max_runs)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                # Up: the leader projected a probe, and every process has its connections.
                write(conn, "probe", [datetime.now(UTC) + timedelta(days=1)])
                wait(conn, "SELECT count(*) FROM mana_ai.mission_snapshots", None, 1, 60)
                time.sleep(1.0 if args.quick else 2.0)

                n = args.missions
                postmaster = postmaster_pid(conn)
                spies = start_profiles(procs, args.profile, tag)
                try:
                    before = sample_cpu(conn, procs, postmaster)
                    write(conn, "thr", [datetime.now(UTC) - timedelta(seconds=1)] * n)
                    wait(conn,
                         "SELECT count(*) FROM mana_ai.dispatch_ledger WHERE state = 'done'",
                         None, n, 600)
                    cpu = cpu_split(before, sample_cpu(conn, procs, postmaster), n)
                finally:
                    stop_profiles(spies)
                span, owners = conn.execute(
                    """SELECT extract(epoch FROM max(finished_at) - min(decided_at)),
                              count(DISTINCT lease_owner)
                       FROM mana_ai.dispatch_ledger""").fetchone() or (None, 0)

                m = args.latency
                base = datetime.now(UTC) + timedelta(seconds=2 if args.quick else 3)
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
        "expected": n + m, "requests": len(stub.requests), "cpu_ms_per_run": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--missions", type=int, default=160,
                        help="missions of the throughput phase (160: 8 s at one process)")
    parser.add_argument("--latency", type=int, default=30, help="missions of the latency phase")
    parser.add_argument("--max-runs", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.2, help="stub planner answer time (s)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", help="process counts, comma list (1,2,4; quick 1,2)")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample each consumer with py-spy during the throughput phase "
                        "(collapsed stacks per round and process in DIR; skews the timings)")
    args = parser.parse_args(argv)
    if args.quick:
        args.missions, args.latency, args.rounds = 40, 8, 1
    processes = args.processes or ("1,2" if args.quick else "1,2,4")
    counts = [int(x) for x in processes.split(",")]
    section("runs: throughput over processes, nextRunAt -> write-back")
    results: list[dict[str, Any]] = []
    with bench_template(args, "runs_tpl") as (srv, template):
        for r in range(args.rounds):
            for p in counts:
                res = one_round(srv, template, p, args, tag=f"r{r + 1}-p{p}")
                print(f"   round {r + 1}, {p} process(es): {res['runs_per_s']:.1f} runs/s, "
                      f"{res['owners']} ran some", flush=True)
                results.append(res)
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
    keys = list(results[0]["cpu_ms_per_run"]) if results else []
    keys = [k for k in keys if k != "window_s"]
    print_table(
        "CPU ms per run over the throughput phase (median of rounds; /proc utime+stime)",
        ["", *[f"{p} proc" for p in counts]],
        [(k, *[median([x["cpu_ms_per_run"][k] for x in results if x["processes"] == p])
               for p in counts]) for k in keys])
    note("consumer processes: the `consumer run` pids; their server backends: server "
         "processes of connections named mana-ai*; other server processes: the postmaster "
         "and its other children (WAL writer, checkpointer, autovacuum, exited backends); "
         "whole machine: every process on it, other people's work included")
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
