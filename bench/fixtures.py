"""The data the benchmarks start from, built in the server (INSERT ... SELECT
generate_series, SQL in bench/sql/): mission snapshots with their due index (scheduler,
memory), a catch-up backlog through the journal trigger (catch-up, tick), and the loading
aid they share: bulk loads go in with a table's secondary indexes dropped and rebuilt
after, which PostgreSQL does by one sort per index instead of a tree insert per row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo

import msgspec
import psycopg
from psycopg import sql

from bench.common import bench_sql

DUE_EVERY = 1000
MISSIONS_PER_USER = 20
LOAD_CHUNK = 200_000
# How many snapshots the migration's due parser fills (timed; at most a tenth of them): a
# cast fills the rest.
PARSER_SAMPLE = 100_000

_SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid = %s::regclass
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""


@contextlib.contextmanager
def indexes_dropped(conn: psycopg.Connection, table: str) -> Iterator[None]:
    """Drop `table`'s secondary indexes (constraints' indexes stay) for the block, then
    build them again and analyze the table. `conn` is in autocommit."""
    found = conn.execute(_SECONDARY_INDEXES, (table,)).fetchall()
    for name, _definition in found:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))
    try:
        yield
    finally:
        for _name, definition in found:
            conn.execute(definition)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(table)))


# --------------------------------------------------------------------------- snapshots


def due_mission(mission_id: str, at: datetime, *, offset: tzinfo | None = None,
                agent_id: str | None = None) -> dict[str, object]:
    """An active mission's record due at `at`: nextRunAt in UTC with 'Z' and milliseconds
    (as the web app writes it), or at `offset`. The runs benchmark writes it to the log,
    the scheduler's straight into the snapshots."""
    if offset is None:
        utc = at.astimezone(UTC)
        spelled = utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    else:
        spelled = at.astimezone(offset).isoformat(timespec="milliseconds")
    record: dict[str, object] = {"id": mission_id, "title": mission_id, "state": "active",
                                 "objective": "benchmark", "nextRunAt": spelled}
    if agent_id is not None:
        record["agentId"] = agent_id
    return record


class SnapshotLoad(msgspec.Struct):
    loaded_s: float  # snapshots and agents
    parser_rows: int = 0  # due index rows the migration's parser filled (timed)
    parser_s: float = 0.0
    rest_s: float = 0.0  # the other rows, by a cast
    disagree: int = 0  # rows where the parser and the cast differ (must be 0)
    indexed: bool = False  # whether this schema has a due index at all

    def parser_s_for(self, missions: int) -> float | None:
        """The parser's time for all `missions`, from its sample (None without a due index)."""
        if not self.indexed or not self.parser_rows:
            return None
        return self.parser_s * missions / self.parser_rows


def has_due_index(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('mana_ai.mission_due') IS NOT NULL").fetchone()
    return bool(row and row[0])


def load_snapshots(dsn: str, missions: int, now: datetime,
                   parser_sample: int | None = None) -> SnapshotLoad:
    """Bulk-load `missions` snapshots (1 in DUE_EVERY due, the rest over 30 days) and the
    users' agents, then fill the due index: the first `parser_sample` rows by the
    migration's parser (timed), the rest by a cast that agrees with it on these spellings."""
    users = max(1, missions // MISSIONS_PER_USER)
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with indexes_dropped(conn, "mana_ai.mission_snapshots"):
            for start in range(1, missions + 1, LOAD_CHUNK):
                stop = min(start + LOAD_CHUNK - 1, missions)
                conn.execute(
                    bench_sql("fixture_due"),
                    {"start": start, "stop": stop, "users": users, "due_every": DUE_EVERY,
                     "now": now},
                )
                print(f"   loaded {stop:,} of {missions:,} missions", flush=True)
        conn.execute(bench_sql("fixture_agents"), {"users": users})
        out = SnapshotLoad(loaded_s=time.perf_counter() - started)
        if has_due_index(conn):
            out.indexed = True
            out.parser_rows = min(missions, parser_sample or PARSER_SAMPLE,
                                  max(1, missions // 10))
            t0 = time.perf_counter()
            conn.execute(bench_sql("due_fill_parser"), {"n": out.parser_rows})
            out.parser_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            conn.execute(bench_sql("due_fill_cast"))
            out.rest_s = time.perf_counter() - t0
            row = conn.execute(bench_sql("due_fill_disagree")).fetchone()
            out.disagree = int(row[0]) if row else -1
            conn.execute("VACUUM ANALYZE mana_ai.mission_due")
        # What a long-lived table looks like: statistics and a visibility map.
        conn.execute("VACUUM ANALYZE mana_ai.mission_snapshots")
        conn.execute("VACUUM ANALYZE mana_ai.agent_snapshots")
    return out


def describe_due_fill(load: SnapshotLoad, missions: int) -> str:
    """One line for the report: what the due index's fill took, and how it was made."""
    if not load.indexed:
        return "no due index in this schema"
    total = load.parser_s_for(missions) or 0.0
    text = (f"due index: the migration's SQL parser filled {load.parser_rows:,} rows in "
            f"{load.parser_s:.1f} s")
    if load.parser_rows < missions:
        text += (f" ({total:.0f} s for all {missions:,}, extrapolated), the rest by a "
                 f"timestamptz cast in {load.rest_s:.1f} s")
    return text + f"; rows where parser and cast disagree: {load.disagree}"


# --------------------------------------------------------------------------- backlog


class Backlog:
    """A synthetic catch-up backlog (bench/sql/fixture_backlog.sql): `rows` log rows over
    `records` records (4 in 5 missions), `users` users, through the journal trigger."""

    def __init__(self, rows: int, records: int, users: int = 1000) -> None:
        self.rows = rows
        self.records = records
        self.missions = records * 4 // 5
        self.users = users

    @property
    def expected(self) -> tuple[int, int]:
        deleted = sum(1 for r in range(self.missions, self.records) if r % 97 == 0)
        deleted = deleted if self.rows > self.records else 0
        return self.missions, self.records - self.missions - deleted

    def load(self, dsn: str, chunk: int = 2000) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            with indexes_dropped(conn, "public.sync_changes"):
                for lo in range(1, self.rows + 1, chunk):
                    hi = min(lo + chunk - 1, self.rows)
                    with conn.transaction():  # one xid per chunk, like many writers
                        conn.execute(bench_sql("fixture_backlog"), {
                            "lo": lo, "hi": hi, "total": self.rows, "records": self.records,
                            "missions": self.missions, "users": self.users,
                        })
            conn.execute("VACUUM (ANALYZE) public.sync_changes")
            conn.execute("VACUUM (ANALYZE) mana_ai.journal")

    def describe(self, dsn: str) -> str:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                """SELECT count(*), count(DISTINCT (table_name, record_id)),
                          count(*) FILTER (WHERE table_name = 'agents'),
                          count(*) FILTER (WHERE op = 'delete'),
                          avg(octet_length(data::text))::int,
                          avg(octet_length(field_meta::text))::int,
                          (SELECT count(*) FROM mana_ai.journal),
                          (SELECT count(DISTINCT xid) FROM mana_ai.journal),
                          pg_size_pretty(pg_total_relation_size('public.sync_changes'))
                   FROM public.sync_changes"""
            ).fetchone()
        assert row is not None
        return (f"{row[0]:,} rows ({row[2]:,} agent rows, {row[3]} deletes) over {row[1]:,} "
                f"records, {self.users} users; avg data {row[4]} B, field_meta {row[5]} B; "
                f"journal {row[6]:,} rows in {row[7]} xids; sync_changes {row[8]}")
