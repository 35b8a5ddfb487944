"""Replay benchmark (issue 4): a plain script, not a test.

Loads N synthetic log rows (INSERT ... SELECT generate_series, the journal trigger off,
~10 rows per record, realistic mission and agent JSON), then runs `consumer replay` on
them: wall time, rows/s and the peak RSS of this process (the replay runs in it). Goal:
1M rows in <= 60 s on a 2-core machine. With --verify, `consumer replay --verify` runs
after the swap as well.

    python -m bench.bench_replay [--rows 1000000] [--batch-size 5000] [--verify]
                                 [--database-url URL]
"""

from __future__ import annotations

import logging
import resource
import time

import psycopg

from bench.common import (
    base_parser,
    bench_sql,
    bench_template,
    note,
    print_table,
    section,
)
from bench.fixtures import indexes_dropped
from consumer.replay import ProgressPrinter, run_replay
from consumer.sql import load

LOAD_CHUNK = 200_000


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux: the peak of this process so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_log(dsn: str, rows: int) -> float:
    """Insert `rows` log rows with the journal trigger disabled; returns seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        try:
            with indexes_dropped(conn, "public.sync_changes"):
                for start in range(1, rows + 1, LOAD_CHUNK):
                    stop = min(start + LOAD_CHUNK - 1, rows)
                    conn.execute(bench_sql("fixture_replay"), {"start": start, "stop": stop})
                    print(f"   loaded {stop:,} of {rows:,} rows", flush=True)
        finally:
            conn.execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_journal")
        # What a long-lived table looks like: statistics and a visibility map.
        conn.execute("VACUUM ANALYZE public.sync_changes")
    return time.perf_counter() - started


def read_plan(dsn: str) -> str:
    """How the server streams the log for replay (a cursor plans for a fast start)."""
    with psycopg.connect(dsn) as conn:
        plan = conn.execute(
            "EXPLAIN DECLARE c NO SCROLL CURSOR FOR " + load("journal/log_read")
        ).fetchall()
    return plan[0][0].split("  (cost")[0].strip()


def run(dsn: str, rows: int, batch_size: int, verify: bool) -> int:
    section(f"loading {rows:,} log rows")
    load_seconds = load_log(dsn, rows)
    note(f"loaded in {load_seconds:.1f} s; read plan: {read_plan(dsn)}")
    rss_before = _rss_mib()

    section("replay")
    started = time.perf_counter()
    code = run_replay(dsn, batch_size=batch_size, progress=ProgressPrinter(interval=5.0))
    wall = time.perf_counter() - started
    rss_peak = _rss_mib()
    results: list[tuple[object, ...]] = [
        ("replay", wall, rows / wall, rss_peak, code),
    ]
    if verify:
        section("replay --verify")
        started = time.perf_counter()
        vcode = run_replay(dsn, verify=True, batch_size=batch_size,
                           progress=ProgressPrinter(interval=5.0))
        vwall = time.perf_counter() - started
        results.append(("replay --verify", vwall, rows / vwall, _rss_mib(), vcode))
    print()
    print_table(
        f"replay of {rows:,} log rows (batch {batch_size:,}); peak RSS before the "
        f"replay {rss_before:.0f} MiB",
        ["run", "wall s", "rows/s", "peak RSS MiB", "exit"],
        results,
    )
    goal = 60.0 * rows / 1_000_000
    note(f"goal: <= {goal:.0f} s for {rows:,} rows (60 s per million): "
         + ("met" if wall <= goal else "MISSED"))
    return 0 if code == 0 and all(r[-1] == 0 for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--rows", type=int, default=1_000_000, help="log rows (1000000)")
    parser.add_argument("--batch-size", type=int, default=5000, help="rows per batch (5000)")
    parser.add_argument("--verify", action="store_true", help="also time replay --verify")
    args = parser.parse_args(argv)
    rows = min(args.rows, 20_000) if args.quick else args.rows
    # Progress lines of the replay (a plain log line every 5 s when not on a terminal).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("   %(message)s"))
    replay_log = logging.getLogger("consumer.replay")
    replay_log.addHandler(handler)
    replay_log.setLevel(logging.INFO)
    with bench_template(args, "replay") as (srv, name):
        return run(srv.dsn_for(name), rows, args.batch_size, args.verify)


if __name__ == "__main__":
    raise SystemExit(main())
