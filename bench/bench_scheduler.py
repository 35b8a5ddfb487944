"""Scheduler benchmark (issue 5): a plain script, not a test.

1. Due selection with N mission snapshots (default 1M) of which 1 in 1000 are due: the
   snapshots are bulk-loaded with generate_series (the rest are due over the next 30 days,
   every 10th paused, every 200th with a '+02:00' offset). Reports the median of several
   runs of the due query (SQL alone, and with the parse/filter in Python), of the
   next-wake query, one full first pass (decide and claim every due mission in the ledger;
   no worker runs them) and the steady pass after that (everything claimed).
2. Lateness: ~200 missions due at staggered times a few seconds out; the scheduler runs
   (run(), max_sleep 60) and each decision span's mission.lateness_ms is read back. Done on
   top of the 1M snapshots and again on a small table.

    python -m bench.bench_scheduler [--missions 1000000] [--runs 7] [--lateness 200]
                                    [--database-url URL] [--quick]
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import anyio
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from bench.common import (
    base_parser,
    machine_info,
    median,
    note,
    percentile,
    print_table,
    section,
    server,
)
from consumer import metrics
from consumer.decisions import Decision
from consumer.scheduler import MAX_POSITIVE_OFFSET, TEXT_SLACK, Scheduler, utc_text
from consumer.sql import load
from consumer.telemetry import in_memory_provider, tracer

DUE_EVERY = 1000
MISSIONS_PER_USER = 20
LOAD_CHUNK = 200_000


def load_snapshots(dsn: str, missions: int, now: datetime) -> float:
    """Bulk-load `missions` snapshots and the users' agents; returns seconds taken."""
    users = max(1, missions // MISSIONS_PER_USER)
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(1, missions + 1, LOAD_CHUNK):
            stop = min(start + LOAD_CHUNK - 1, missions)
            conn.execute(
                load("due_bench_load"),
                {"start": start, "stop": stop, "users": users, "due_every": DUE_EVERY,
                 "now": now},
            )
            print(f"   loaded {stop:,} of {missions:,} missions", flush=True)
        conn.execute(load("agents_bench_load"), {"users": users})
        # What a long-lived table looks like: statistics and a visibility map.
        conn.execute("VACUUM ANALYZE mana_ai.mission_snapshots")
        conn.execute("VACUUM ANALYZE mana_ai.agent_snapshots")
    return time.perf_counter() - started


def query_plan(dsn: str, now: datetime) -> list[str]:
    params = {"exact": utc_text(now + TEXT_SLACK),
              "wide": utc_text(now + MAX_POSITIVE_OFFSET + TEXT_SLACK)}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {load('due_missions')}",  # type: ignore[arg-type]
            params,
        ).fetchall()
    return [r[0] for r in rows]


async def selection(dsn: str, runs: int) -> list[tuple[object, ...]]:
    """Medians of the due query, the selection with its Python filter, and the next query."""
    provider, _ = in_memory_provider()
    rows: list[tuple[object, ...]] = []
    async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
        await pool.open(wait=True)
        sched = Scheduler(pool, tracer=tracer(provider))
        sql_times, narrow_times, select_times, next_times = [], [], [], []
        candidates = due = 0
        async with pool.connection() as conn:
            for i in range(runs + 1):  # the first run warms the caches and is not counted
                now = datetime.now(UTC)
                params = {"exact": utc_text(now + TEXT_SLACK),
                          "wide": utc_text(now + MAX_POSITIVE_OFFSET + TEXT_SLACK)}
                tw = time.perf_counter()
                cur = await conn.execute(load("due_missions"), params)
                candidates = len(await cur.fetchall())
                t0 = time.perf_counter()
                narrow = {**params, "wide": params["exact"]}
                cur = await conn.execute(load("due_missions"), narrow)
                await cur.fetchall()
                t1 = time.perf_counter()
                found, _ = await sched._select(conn, now)
                t2 = time.perf_counter()
                cur = await conn.execute(
                    load("due_next"), {"after": params["exact"], "limit": 32}
                )
                await cur.fetchall()
                t3 = time.perf_counter()
                await conn.rollback()
                due = len(found)
                if i:
                    sql_times.append(t0 - tw)
                    narrow_times.append(t1 - t0)
                    select_times.append(t2 - t1)
                    next_times.append(t3 - t2)
        rows.append(("due query, 14 h window (once a minute)", median(sql_times) * 1e3,
                     candidates, due))
        rows.append(("due query, text bound (every pass)", median(narrow_times) * 1e3,
                     "-", due))
        rows.append(("due selection per pass (SQL + parse)", median(select_times) * 1e3,
                     "-", due))
        rows.append(("next-wake query (due_next)", median(next_times) * 1e3, 32, "-"))

        # As inside run(): the pass decides and claims; the runs are the workers' (not here).
        async with anyio.create_task_group() as tg:
            sched._tg = tg
            t0 = time.perf_counter()
            first = await sched.run_pass()
            first_s = time.perf_counter() - t0
        sched._tg = None
        ran = sum(r.decision is Decision.RAN for r in first)
        rows.append(("first pass: decide+claim", first_s * 1e3, len(first), ran))
        steady = []
        for _ in range(runs):
            t0 = time.perf_counter()
            again = await sched.run_pass()
            steady.append(time.perf_counter() - t0)
        rows.append(("steady pass (all claimed)", median(steady) * 1e3, len(again), 0))
    return rows


async def lateness(dsn: str, count: int, spread: float, lead: float) -> dict[str, float]:
    """Missions due `lead`..`lead`+`spread` s out; decision lateness from their spans."""
    provider, exporter = in_memory_provider()
    now = datetime.now(UTC)
    due_at = {f"late-{i}": now + timedelta(seconds=lead + spread * i / count)
              for i in range(count)}
    ticks_before = metrics.REGISTRY.get_sample_value("mana_ai_ticks_total") or 0.0
    async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
        await pool.open(wait=True)
        sched = Scheduler(pool, tracer=tracer(provider), max_sleep=60)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sched.run)
            await anyio.sleep(0.2)  # the first pass: it finds nothing and sleeps
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    """INSERT INTO mana_ai.agent_snapshots (user_id, agent_id, record)
                       VALUES ('late-u', 'bench-a1',
                               '{"id": "bench-a1", "name": "L", "state": "active"}')"""
                )
                for i, (mission_id, at) in enumerate(due_at.items()):
                    record = {"id": mission_id, "state": "active", "title": mission_id,
                              "nextRunAt": at.strftime("%Y-%m-%dT%H:%M:%S.")
                              + f"{at.microsecond // 1000:03d}Z"}
                    if i % 2:  # half with an agent, half legacy
                        record["agentId"] = "bench-a1"
                    conn.execute(
                        """INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record)
                           VALUES ('late-u', %s, %s::jsonb)""",
                        (mission_id, Jsonb(record)),
                    )
            sched.notify_changed()  # what the projection does after applying rows
            deadline = time.monotonic() + lead + spread + 10
            while time.monotonic() < deadline:
                spans = [s for s in exporter.get_finished_spans()
                         if s.name == "mission.decision"
                         and str((s.attributes or {}).get("mission.id", "")).startswith("late-")]
                if len(spans) >= count:
                    break
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    late = [float(str((s.attributes or {})["mission.lateness_ms"])) for s in spans]
    ticks = (metrics.REGISTRY.get_sample_value("mana_ai_ticks_total") or 0.0) - ticks_before
    return {"decided": len(late), "p50": percentile(late, 50), "p99": percentile(late, 99),
            "max": max(late, default=float("nan")), "passes": ticks}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--missions", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7, help="runs per median (7)")
    parser.add_argument("--lateness", type=int, default=200, help="missions in the lateness run")
    parser.add_argument("--spread", type=float, default=5.0,
                        help="seconds over which the lateness missions fall due (5)")
    args = parser.parse_args(argv)
    if args.quick:
        args.missions, args.runs, args.lateness = 50_000, 3, 50

    with server(args.database_url) as srv:
        print_table("machine", ["", ""], machine_info(srv))
        template = srv.migrated_template("sched")
        try:
            with srv.scratch(template, tag="sched") as dsn:
                section(f"due selection: {args.missions:,} missions, 1 in {DUE_EVERY} due")
                loaded = load_snapshots(dsn, args.missions, datetime.now(UTC))
                note(f"bulk load {loaded:.1f} s")
                plan = query_plan(dsn, datetime.now(UTC))
                rows = anyio.run(selection, dsn, args.runs)
                print_table(
                    f"due selection, median of {args.runs} runs",
                    ["step", "ms", "rows", "due"], rows,
                )
                note("plan of the due query:")
                for line in plan:
                    note("  " + line)
                print()
                big = anyio.run(lateness, dsn, args.lateness, args.spread, 2.0)
            with srv.scratch(template, tag="sched") as dsn:
                small = anyio.run(lateness, dsn, args.lateness, args.spread, 2.0)
        finally:
            srv.drop_database(template)

    print_table(
        f"decision lateness: {args.lateness} missions due over {args.spread:g} s, "
        "nextRunAt -> decision span (ms)",
        ["snapshot table", "decided", "p50", "p99", "max", "passes"],
        [
            (f"{args.missions:,} missions", int(big["decided"]), big["p50"], big["p99"],
             big["max"], int(big["passes"])),
            ("lateness missions only", int(small["decided"]), small["p50"], small["p99"],
             small["max"], int(small["passes"])),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
