"""Catch-up throughput (issue 11, item 1): rows/s applying a backlog, a plain script, not a
test.

`shapes` (default): the same rows over few or many records (rows per record is what a
record-grouped fold can exploit), journal path (checkpoint bootstrapped) at every shape
and bootstrap path (log scan) at the middle one, each run on a fresh clone of a loaded
template database. `sweep`: one shape at several batch sizes, with a statement breakdown
(and --profile, a cProfile of one run).

    python -m bench.bench_catchup [--quick] [--parts shapes,sweep] [--backlog-rows 200000]
                                  [--shapes 2000,20000,200000] [--shape-runs 2] [--profile]
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import math
import pstats
import sys
import time
from typing import Any

import psycopg

from bench.common import (
    Server,
    Stopwatch,
    base_parser,
    bench_sql,
    bench_template,
    median,
    note,
    print_table,
    record,
    section,
    verdict,
)
from bench.fixtures import Backlog
from bench.statements import STATEMENTS, StatementTimer
from consumer import eventloop

GOAL_ROWS_PER_S = 15_000.0  # the sweep's journal path at the default batch
GOAL_GROUPED = 25_000.0  # 200k rows over 20k records (10 rows per record)
GOAL_SPREAD = 12_000.0  # 200k rows over 200k records (one row per record)
PARTS = ("shapes", "sweep")


class RunStats(StatementTimer):
    """One catch-up run: wall and client CPU seconds, and the statement times."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.rows = rows
        self.wall = 0.0
        self.cpu = 0.0
        self.fingerprint: tuple = ()

    @property
    def rate(self) -> float:
        return self.rows / self.wall if self.wall else 0.0


async def _apply_backlog(
    dsn: str, batch_size: int, stats: RunStats, profile: cProfile.Profile | None
) -> None:
    from consumer.projection import Projector

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        stats.instrument(conn)
        projector = Projector(batch_size=batch_size)
        if profile:
            profile.enable()
        cpu = time.process_time()
        with Stopwatch() as sw:
            await projector.bootstrap(conn)
            await projector.catch_up(conn)
        stats.cpu = time.process_time() - cpu
        stats.wall = sw.seconds
        if profile:
            profile.disable()


def _prepare(dsn: str, path: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if path == "journal":
            conn.execute("UPDATE mana_ai.checkpoint SET bootstrapped = true")
        else:  # bootstrap: the same rows, as if they predated the trigger
            conn.execute("TRUNCATE mana_ai.journal")
            conn.execute(
                """UPDATE mana_ai.checkpoint SET bootstrapped = false,
                          applied_below = pg_snapshot_xmin(pg_current_snapshot())"""
            )
        conn.execute("CHECKPOINT")  # do not bill the clone's dirty buffers to the run


def _run_backlog(
    srv: Server, template: str, path: str, batch_size: int, backlog: Backlog,
    profile: cProfile.Profile | None = None,
) -> RunStats:
    stats = RunStats(backlog.rows)
    with srv.scratch(template, "cu") as dsn:
        _prepare(dsn, path)
        eventloop.run(_apply_backlog, dsn, batch_size, stats, profile)
        with psycopg.connect(dsn) as conn:
            fp = conn.execute(bench_sql("backlog_fingerprint")).fetchone()
    assert fp is not None
    stats.fingerprint = tuple(fp)
    return stats


def bench_catchup(
    srv: Server, template: str, *, rows: int, records: int, runs: int, sweep_runs: int,
    batch_sizes: list[int], bootstrap_sizes: list[int], profile: bool,
) -> None:
    section(f"2. catch-up throughput over a {rows:,}-row backlog ({records:,} records): "
            f"median of {runs} at the default batch 2000, {sweep_runs} run(s) at other sizes")
    backlog = Backlog(rows, records)
    loaded = srv.migrated_template("backlog")
    try:
        with Stopwatch() as sw:
            backlog.load(srv.dsn_for(loaded))
        note(backlog.describe(srv.dsn_for(loaded)))
        note(f"loaded with the trigger enabled in {sw.seconds:.1f} s "
             f"({rows / sw.seconds:,.0f} rows/s incl. journal)")
        table_rows: list[list[object]] = []
        fingerprints: set[tuple] = set()
        expected = backlog.expected
        plan = [("journal", b) for b in batch_sizes] + [("bootstrap", b) for b in bootstrap_sizes]
        typical: dict[str, RunStats] = {}
        goal_at_default: float | None = None
        for path, batch in plan:
            results = []
            for _ in range(runs if batch == 2000 else sweep_runs):
                st = _run_backlog(srv, loaded, path, batch, backlog)
                results.append(st)
                fingerprints.add(st.fingerprint)
                if st.fingerprint[:3] != (*expected, 0):
                    note(f"!! {path}/{batch}: snapshots {st.fingerprint[:3]} != "
                         f"expected {expected}, 0")
            rates = [r.rate for r in results]
            med = median(rates)
            if batch == 2000 or path not in typical:
                typical[path] = sorted(results, key=lambda r: r.rate)[len(results) // 2]
            if path == "journal" and batch == 2000:
                goal_at_default = med
            table_rows.append([f"{path} path", batch, len(results), med, min(rates),
                               max(rates), rows / med,
                               1e6 * median([r.cpu for r in results]) / rows])
            note(f"{path} batch {batch}: " + ", ".join(f"{r:,.0f}" for r in rates) + " rows/s")
        print_table(
            "catch-up: Projector.bootstrap + Projector.catch_up on one connection",
            ["", "batch", "runs", "rows/s (median)", "min", "max", "seconds",
             "client CPU us/row"],
            table_rows,
        )
        _print_split(typical)
        verdict(f"all runs and paths give identical snapshots ({expected[0]:,} missions, "
                f"{expected[1]:,} agents, 0 quarantined)",
                len(fingerprints) == 1 and next(iter(fingerprints))[:3] == (*expected, 0))
        if goal_at_default is not None:
            verdict(f"journal path at the default batch 2000: {goal_at_default:,.0f} rows/s "
                    f">= {GOAL_ROWS_PER_S:,.0f}", goal_at_default >= GOAL_ROWS_PER_S)
        if profile:
            _profile_catchup(srv, loaded, backlog)
        print()
    finally:
        srv.drop_database(loaded)


def bench_shapes(
    srv: Server, template: str, *, rows: int, shapes: list[int], runs: int,
    bootstrap_runs: int, run_budget: float = math.inf,
) -> list[dict[str, Any]]:
    """Catch-up rows/s by backlog shape: the same number of rows over few or many records
    (rows per record is what a record-grouped fold can exploit), at the default batch.

    Up to `runs` runs per shape, a further one only while the shape's runs so far took
    less than `run_budget` seconds: a run that long already averages over the machine's
    short-term noise, and a second one would mostly cost time."""
    section(f"2. catch-up throughput by backlog shape: {rows:,} rows over "
            + ", ".join(f"{n:,}" for n in shapes) + f" records; journal path {runs} run(s) "
            f"each (fewer once a shape took {run_budget:g} s), bootstrap path "
            f"{bootstrap_runs} run(s) at the middle shape")
    found: list[dict[str, Any]] = []
    table_rows: list[list[object]] = []
    ok = True
    for records in shapes:
        backlog = Backlog(rows, records)
        loaded = srv.migrated_template("shape")
        try:
            with Stopwatch() as sw:
                backlog.load(srv.dsn_for(loaded))
            note(f"{records:,} records: {backlog.describe(srv.dsn_for(loaded))}; loaded in "
                 f"{sw.seconds:.0f} s")
            # The bootstrap path (a log scan) only at the middle shape, to save time.
            middle = sorted(shapes)[len(shapes) // 2]
            for path, n in (("journal", runs),
                            ("bootstrap", bootstrap_runs if records == middle else 0)):
                results: list[RunStats] = []
                while len(results) < n and (
                        not results or sum(r.wall for r in results) < run_budget):
                    results.append(_run_backlog(srv, loaded, path, 2000, backlog))
                if not results:
                    continue
                ok = ok and all(r.fingerprint[:3] == (*backlog.expected, 0) for r in results)
                rates = [r.rate for r in results]
                cpu = 1e6 * median([r.cpu for r in results]) / rows
                found.append({"rows": rows, "records": records, "path": path,
                              "rates": rates, "client_cpu_us_per_row": cpu})
                table_rows.append([f"{path} path", f"{rows // records:,}", records, len(rates),
                                   median(rates), min(rates), max(rates), cpu])
        finally:
            srv.drop_database(loaded)
    print_table(
        f"catch-up of a {rows:,}-row backlog by shape (Projector.bootstrap + catch_up on one "
        "connection, batch 2000)",
        ["", "rows/record", "records", "runs", "rows/s (median)", "min", "max",
         "client CPU us/row"],
        table_rows,
    )
    verdict("every run gives the expected snapshots (0 quarantined)", ok)
    for records, goal in ((rows // 10, GOAL_GROUPED), (rows, GOAL_SPREAD)):
        rates = next((f["rates"] for f in found
                      if f["records"] == records and f["path"] == "journal"), None)
        if rates:
            verdict(f"journal path, {rows:,} rows over {records:,} records: "
                    f"{median(rates):,.0f} rows/s >= {goal:,.0f}", median(rates) >= goal)
    record("catchup_shapes", found)
    return found


def _print_split(typical: dict[str, RunStats]) -> None:
    labels: list[str] = []
    for st in typical.values():
        labels += [k for k in st.stmt if k not in labels]
    order = [lab for _, lab in STATEMENTS if lab in labels]
    order = list(dict.fromkeys(order)) + [lab for lab in labels if lab not in order]
    paths = list(typical)
    rows: list[list[object]] = []
    for lab in order:
        row: list[object] = [f"execute: {lab}"]
        for p in paths:
            st = typical[p]
            secs = st.stmt.get(lab, 0.0)
            row += [secs, 1e6 * secs / st.rows, st.calls.get(lab, 0)]
        rows.append(row)
    rest: list[object] = ["rest: commits, bootstrap cursor fetch, Python outside execute"]
    cpu: list[object] = ["(client CPU of the whole run, overlaps the above)"]
    total: list[object] = ["wall"]
    for p in paths:
        st = typical[p]
        other = st.wall - sum(st.stmt.values())
        rest += [other, 1e6 * other / st.rows, ""]
        cpu += [st.cpu, 1e6 * st.cpu / st.rows, ""]
        total += [st.wall, 1e6 * st.wall / st.rows, ""]
    rows += [rest, total, cpu]
    headers = [""]
    for p in paths:
        headers += [f"{p} s", "us/row", "calls"]
    print_table(
        "where a median run at batch 2000 spends its time (execute = client parameter "
        "dumping + round trip + server)",
        headers, rows,
    )


def _profile_catchup(srv: Server, template: str, backlog: Backlog) -> None:
    """Diagnostics: a cProfile of one journal-path run, top functions by own time."""
    prof = cProfile.Profile(time.perf_counter)
    run = _run_backlog(srv, template, "journal", 2000, backlog, profile=prof)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    note(f"cProfile of one journal-path run at batch 2000 ({run.rate:,.0f} rows/s under "
         f"the profiler; {stats.total_tt:.1f} s profiled), top functions by own time:")  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(20)
    print("\n".join("   " + line for line in out.getvalue().splitlines()
                    if line.strip() and not line.startswith("   Ordered")), flush=True)


def parse_args(argv: list[str]) -> Any:
    parser = base_parser("Catch-up throughput by backlog shape (and a batch-size sweep).")
    parser.add_argument("--parts", default="shapes",
                        help=f"comma list of {', '.join(PARTS)} (shapes)")
    add_arguments(parser)
    args = finish_args(parser.parse_args(argv))
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}")
    return args


def add_arguments(parser: Any) -> None:
    parser.add_argument("--shapes", default=None, help="records of each backlog shape, comma "
                        "list (rows/100, rows/10, rows; quick rows/10, rows)")
    parser.add_argument("--shape-runs", type=int,
                        help="journal-path runs per shape, at most (2, quick 1)")
    parser.add_argument("--run-budget", type=float, default=30.0,
                        help="no further run of a shape once its runs took this many "
                        "seconds (30)")
    parser.add_argument("--bootstrap-runs", type=int,
                        help="bootstrap-path runs at the middle shape (1, quick 0)")
    parser.add_argument("--backlog-rows", type=int, help="rows (200000, quick 6000)")
    parser.add_argument("--records", type=int, help="sweep: distinct records (rows/10)")
    parser.add_argument("--sweep-runs", type=int, default=1,
                        help="sweep: runs at the batch sizes other than 2000 (1)")
    parser.add_argument("--sweep-default-runs", type=int,
                        help="sweep: runs at the default batch 2000 (3, quick 1)")
    parser.add_argument("--batch-sizes", default=None,
                        help="sweep: comma list for the journal path (1000,2000,5000); "
                        "the size of a pass's first chunk: windows read at most "
                        "projection.WINDOW_READ (250) rows a statement whatever it is")
    parser.add_argument("--bootstrap-batch-sizes", default=None,
                        help="sweep: comma list for the bootstrap path (1000,2000,5000)")
    parser.add_argument("--profile", action="store_true",
                        help="sweep: also profile one journal-path run (cProfile)")


def finish_args(args: Any) -> Any:
    q = args.quick
    args.backlog_rows = args.backlog_rows or (6_000 if q else 200_000)
    rows = args.backlog_rows
    args.records = args.records or max(rows // 10, 10)
    args.shapes = _ints(args.shapes, [max(rows // 10, 1), rows] if q
                        else [max(rows // 100, 1), max(rows // 10, 1), rows])
    args.shape_runs = args.shape_runs if args.shape_runs is not None else (1 if q else 2)
    args.bootstrap_runs = (args.bootstrap_runs if args.bootstrap_runs is not None
                           else (0 if q else 1))
    if getattr(args, "sweep_default_runs", None) is None:
        args.sweep_default_runs = 1 if q else 3
    args.batch_sizes = _ints(args.batch_sizes, [2000] if q else [1000, 2000, 5000])
    args.bootstrap_batch_sizes = _ints(args.bootstrap_batch_sizes,
                                       [2000] if q else [1000, 2000, 5000])
    return args


def _ints(text: str | None, default: list[int]) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else default


def run(srv: Server, template: str, args: Any, parts: list[str]) -> None:
    if "shapes" in parts:
        bench_shapes(srv, template, rows=args.backlog_rows, shapes=args.shapes,
                     runs=args.shape_runs, bootstrap_runs=args.bootstrap_runs,
                     run_budget=args.run_budget)
    if "sweep" in parts:
        bench_catchup(srv, template, rows=args.backlog_rows, records=args.records,
                      runs=args.sweep_default_runs, sweep_runs=args.sweep_runs,
                      batch_sizes=args.batch_sizes, bootstrap_sizes=args.bootstrap_batch_sizes,
                      profile=args.profile)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    with bench_template(args, "catchup",
                        "bench_catchup: catch-up throughput (issue 11)") as (srv, template):
        run(srv, template, args, args.parts)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(sys.argv[1:]))
