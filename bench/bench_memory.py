"""Memory of `consumer run` beside many missions, under traffic (issue 11, item 7).

Loads N mission snapshots (1M; 1 in 1000 due, the rest due over 30 days) and their agents,
starts `consumer run` (projection and scheduler; without MANA_LLM_URL due missions are
decided and recorded, not planned) as a child process, and drives mana-sync-shaped writes
of our rows at a steady rate with pgbench (-R) while sampling the process's resident set
(/proc/<pid>/status) every 0.2 s. Reports RSS when ready, peak (VmHWM) and steady (median
of the second half of the traffic).

    python -m bench.bench_memory [--quick] [--missions 1000000] [--seconds 20] [--rate 500]
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.bench_cost import Consumer, pgbench_cmd, write_scripts
from bench.common import (
    base_parser,
    bench_template,
    command,
    heading,
    median,
    note,
    pgbench,
    print_table,
    record,
    section,
    verdict,
)
from bench.fixtures import describe_due_fill, load_snapshots

GOAL_MIB = 150 * 1000 * 1000 / 2**20  # 150 MB


def status_kib(pid: int, field: str) -> float:
    """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM); NaN when unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - t0, status_kib(self.pid, "VmRSS") / 1024))
            self.stop.wait(self.every)


def measure(dsn: str, exe: str, missions: int, seconds: int, rate: int,
            settle: float = 2.0) -> dict[str, Any]:
    consumer = Consumer(dsn, scheduler=True)
    consumer.start()
    assert consumer.proc is not None
    pid = consumer.proc.pid
    try:
        time.sleep(settle)  # the scheduler's first pass over the due missions
        ready = status_kib(pid, "VmRSS") / 1024
        sampler = Sampler(pid)
        with tempfile.TemporaryDirectory() as tmp:
            scripts = write_scripts(tmp)
            cmd = pgbench_cmd(exe, dsn, scripts, 2, 100, seconds)
            cmd[1:1] = ["-R", str(rate)]
            command([c if not c.endswith(".sql") else Path(c).name for c in cmd[:-1]] + ["URL"])
            sampler.start()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
            sampler.stop.set()
            sampler.join(2)
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.stderr.strip()}")
        peak = status_kib(pid, "VmHWM") / 1024
        cpu = consumer.cpu()
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                """SELECT (SELECT count(*) FROM mana_ai.mission_snapshots),
                          (SELECT count(*) FROM public.sync_changes)""").fetchone()
            decided = conn.execute("SELECT count(*) FROM mana_ai.dispatch_ledger").fetchone()
    finally:
        consumer.stop()
    assert row is not None
    rss = [m for _, m in sampler.samples if m == m]
    steady = [m for t, m in sampler.samples if t >= seconds / 2 and m == m]
    return {
        "missions": missions, "snapshots_after": row[0], "rows_written": row[1],
        "decided": decided[0] if decided else None, "seconds": seconds, "rate": rate,
        "ready_mib": ready, "peak_mib": peak, "steady_mib": median(steady),
        "max_sampled_mib": max(rss) if rss else float("nan"),
        "cpu_s": cpu[0], "samples": [[round(t, 2), round(m, 1)] for t, m in sampler.samples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("RSS of `consumer run` beside many missions, under traffic.")
    parser.add_argument("--missions", type=int, help="mission snapshots (1000000; quick 20000)")
    parser.add_argument("--seconds", type=int, help="seconds of traffic (20; quick 3)")
    parser.add_argument("--rate", type=int, default=500, help="rows of ours per second (500)")
    args = parser.parse_args(list(argv or []))
    args.missions = args.missions or (20_000 if args.quick else 1_000_000)
    args.seconds = args.seconds or (3 if args.quick else 20)
    heading("bench_memory: RSS of `consumer run` beside many missions (issue 11)")
    exe = pgbench()
    if exe is None:
        return 1
    with bench_template(args, "mem") as (srv, name):
        dsn = srv.dsn_for(name)
        section(f"{args.missions:,} missions, {args.rate} rows/s of ours for {args.seconds} s")
        filled = load_snapshots(dsn, args.missions, datetime.now(UTC))
        note(f"snapshots loaded in {filled.loaded_s:.0f} s; "
             + describe_due_fill(filled, args.missions))
        res = measure(dsn, exe, args.missions, args.seconds, args.rate,
                      settle=1.0 if args.quick else 2.0)
    print_table(
        "resident set of `consumer run` (MiB): when ready (after its first scheduler pass), "
        "peak over the whole life (VmHWM) and steady (median of the second half of the "
        "traffic)",
        ["missions", "rows/s", "seconds", "ready", "peak", "steady", "rows written",
         "decided", "client CPU s"],
        [[res["missions"], res["rate"], res["seconds"], res["ready_mib"], res["peak_mib"],
          res["steady_mib"], res["rows_written"], res["decided"], res["cpu_s"]]],
    )
    verdict(f"peak RSS {res['peak_mib']:.0f} MiB <= 150 MB ({GOAL_MIB:.0f} MiB)",
            res["peak_mib"] <= GOAL_MIB)
    record("memory", res)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(sys.argv[1:]))
