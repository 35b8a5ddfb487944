"""The polling baseline (issue 11, item 2): upstream's tick against our pass, same new rows.

Upstream polls: every tick it (1) groups the whole log of each of its two tables to find
the (user, record) pairs whose newest row is newer than their snapshot's cursor, (2) reads
each such pair's new rows in a user-scoped transaction and the stored snapshot, (3) folds
them and upserts the snapshot, and (4) runs the due query. Missions and agents are
refreshed concurrently. bench/baseline.py is that fold, bench/sql/tick_*.sql its queries,
on snapshot tables of its own (schema bench_tick) in the same database as ours.

For each log size (rows of the ai tables, 10 per record, 4 in 5 records missions): load
the log, build our snapshots (consumer replay), start the baseline from the same records,
then in each round commit N new rows (updates to N distinct existing records, one
transaction, through the journal trigger) and let both take them in, alternating which
goes first: our pass (Projector.catch_up on one connection, as the live consumer) and one
tick. The first round is a warm-up. At the end of each size, both sides' records must
agree (upstream's __fieldMeta aside).

    python -m bench.bench_tick [--quick] [--sizes 10000,100000,1000000] [--rounds 5]
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
from datetime import UTC, datetime
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from bench.baseline import Row as FoldRow
from bench.baseline import fold, js_iso, seed_row
from bench.common import (
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
from bench.fixtures import indexes_dropped
from consumer import eventloop
from consumer.sql import schema_dir

KINDS = (("missions", "aiMissions", False), ("agents", "agents", True))

INSERT_NEW = """INSERT INTO public.sync_changes
    (app_id, table_name, record_id, user_id, op, data, field_meta, client_id)
    VALUES ('ai', %s, %s, %s, 'update', %s, %s, 'bench-tick')"""

AGREE_SQL = """
SELECT (SELECT count(*) FROM mana_ai.mission_snapshots o
        FULL JOIN bench_tick.mission_snapshots b USING (user_id, mission_id)
        WHERE o.record IS DISTINCT FROM b.record - '__fieldMeta')
     + (SELECT count(*) FROM mana_ai.agent_snapshots o
        FULL JOIN bench_tick.agent_snapshots b USING (user_id, agent_id)
        WHERE o.record IS DISTINCT FROM b.record - '__fieldMeta')
"""


# --------------------------------------------------------------------------- the tick

SNAPSHOTS = {"missions": ("mission_snapshots", "mission_id"),
             "agents": ("agent_snapshots", "agent_id")}


def tick_schema() -> str:
    """The baseline's own snapshot tables, beside ours in the same database: the seed's
    migration itself (so its due query has the seed's indexes), in schema bench_tick."""
    seed = (schema_dir() / "migrations" / "0001_seed.sql").read_text()
    return re.sub(r"\bmana_ai\b", "bench_tick", seed)


def stale_query(kind: str) -> sql.Composed:
    """Step 1 of the tick for one of its tables (missions, agents)."""
    table, key = SNAPSHOTS[kind]
    return sql.SQL(bench_sql("tick_stale.tmpl")).format(
        snapshots=sql.Identifier("bench_tick", table), key=sql.Identifier(key))



async def _refresh(conn: psycopg.AsyncConnection, kind: str, table: str, agent: bool,
                   stats: dict[str, float]) -> None:
    """One of upstream's two refreshes (missions or agents) on its own connection."""
    with Stopwatch() as sw:
        cur = await conn.execute(stale_query(kind), {"table_name": table})
        stale = await cur.fetchall()
    stats[f"find_{kind}_ms"] = 1000 * sw.seconds
    stats[f"pairs_{kind}"] = len(stale)
    rows_read = 0
    with Stopwatch() as sw:
        for user_id, record_id, since in stale:
            key = {"user_id": user_id, "record_id": record_id}
            # Upstream reads the rows in a user-scoped transaction (row level security).
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.current_user_id', %s, true)",
                                   (user_id,))
                cur = await conn.execute(bench_sql(f"tick_rows_{kind}"),
                                         {**key, "since": since})
                rows = await cur.fetchall()
            if not rows:
                continue
            rows_read += len(rows)
            cur = await conn.execute(bench_sql(f"tick_get_{kind}"), key)
            stored = await cur.fetchone()
            chain = [seed_row(record_id, stored[0], stored[1])] if stored else []
            chain += [FoldRow(record_id, op, data, meta, at) for op, data, meta, at in rows]
            merged = fold(chain, agent=agent)
            if merged is None:
                await conn.execute(bench_sql(f"tick_drop_{kind}"), key)
            else:
                await conn.execute(bench_sql(f"tick_put_{kind}"),
                                   {**key, "record": Jsonb(merged), "cursor": rows[-1][3]})
    stats[f"apply_{kind}_ms"] = 1000 * sw.seconds
    stats[f"rows_{kind}"] = rows_read


async def tick(conns: tuple[psycopg.AsyncConnection, psycopg.AsyncConnection]
               ) -> dict[str, float]:
    """One polling tick: both refreshes at once (upstream awaits them together), then the
    due query. Connections are autocommit, as upstream's pool."""
    stats: dict[str, float] = {}
    with Stopwatch() as total:
        async with anyio.create_task_group() as tg:
            for conn, (kind, table, agent) in zip(conns, KINDS, strict=True):
                tg.start_soon(_refresh, conn, kind, table, agent, stats)
        with Stopwatch() as sw:
            cur = await conns[0].execute(bench_sql("tick_due"), {"now": js_iso(datetime.now(UTC))})
            stats["due"] = len(await cur.fetchall())
        stats["due_ms"] = 1000 * sw.seconds
    stats["total_ms"] = 1000 * total.seconds
    return stats


# --------------------------------------------------------------------------- data


def load_log(dsn: str, start: int, stop: int, chunk: int = 5000, base: int = 10_000) -> None:
    """Log rows start..stop (10 per record, no deletes) with the journal trigger off: our
    side is rebuilt by replay afterwards, which is faster than following the journal.

    The first `base` rows are generated; the rest are copies of them under new record ids
    (building JSON in SQL is the slow part of a load, and the shape is the same)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_journal")
        try:
            with indexes_dropped(conn, "public.sync_changes"):
                made = start - 1
                while made < min(stop, base):
                    hi = min(made + chunk, stop, base)
                    records = max(min(stop, base) // 10, 10)
                    conn.execute(bench_sql("fixture_backlog"), {
                        "lo": made + 1, "hi": hi,
                        # No delete rows: the last round of deletes starts past `total`.
                        "total": 10 * stop + records, "records": records,
                        "missions": records * 4 // 5, "users": 1000,
                    })
                    made = hi
                while made < stop:
                    n = min(stop - made, base)
                    conn.execute(bench_sql("tick_copy"),
                                 {"suffix": f"-c{made}", "shift": made // base, "n": n})
                    made += n
        finally:
            conn.execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_journal")
        conn.execute("VACUUM (ANALYZE) public.sync_changes")


def rebuild_ours(dsn: str) -> None:
    from consumer.replay import run_replay

    with contextlib.redirect_stdout(sys.stderr):
        code = run_replay(dsn, batch_size=5000, progress=lambda _p: None)
    if code != 0:
        raise RuntimeError(f"replay failed with exit status {code}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(bench_sql("tick_seed"))  # several statements: no parameters


def sample_keys(dsn: str) -> dict[str, list[tuple[str, str]]]:
    with psycopg.connect(dsn) as conn:
        return {
            "aiMissions": conn.execute(
                "SELECT user_id, mission_id FROM mana_ai.mission_snapshots").fetchall(),
            "agents": conn.execute(
                "SELECT user_id, agent_id FROM mana_ai.agent_snapshots").fetchall(),
        }


async def commit_new_rows(conn: psycopg.AsyncConnection, keys: dict[str, list[tuple[str, str]]],
                          n: int, rng: random.Random) -> None:
    """`n` updates to distinct existing records (4 in 5 missions) in one transaction."""
    stamp = js_iso(datetime.now(UTC))
    params = []
    n_agents = min(n // 5, len(keys["agents"]))
    picks = [("aiMissions", k) for k in rng.sample(keys["aiMissions"], n - n_agents)]
    picks += [("agents", k) for k in rng.sample(keys["agents"], n_agents)]
    for table, (user_id, record_id) in picks:
        data: dict[str, Any] = (
            {"state": "active", "nextRunAt": stamp, "updatedAt": stamp}
            if table == "aiMissions" else {"state": "active", "updatedAt": stamp}
        )
        meta = {k: {"at": stamp, "actor": {"kind": "user", "principalId": user_id},
                    "origin": "user"} for k in data}
        params.append((table, record_id, user_id, Jsonb(data), Jsonb(meta)))
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(INSERT_NEW, params)


# --------------------------------------------------------------------------- rounds


async def _rounds(dsn: str, rounds: int, new_rows: int, seed: int) -> dict[str, Any]:
    from consumer.projection import Projector

    keys = sample_keys(dsn)
    rng = random.Random(seed)
    ours = await psycopg.AsyncConnection.connect(dsn)
    # As the live consumer's work connection: asynchronous commit (a lost tail after a
    # crash is read again from the journal). The baseline's writes stay durable, as
    # upstream's are.
    await ours.execute("SET synchronous_commit = off")
    await ours.commit()
    writer = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    a = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    b = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    tick_ms: list[float] = []
    pass_ms: list[float] = []
    parts: list[dict[str, float]] = []
    try:
        projector = Projector(batch_size=2000)
        await projector.bootstrap(ours)
        await projector.catch_up(ours)  # anything the replay left behind
        await tick((a, b))  # both sides start level
        for rnd in range(rounds + 1):
            await commit_new_rows(writer, keys, new_rows, rng)
            measured: dict[str, float] = {}
            for side in (("ours", "tick") if rnd % 2 == 0 else ("tick", "ours")):
                if side == "ours":
                    with Stopwatch() as sw:
                        await projector.catch_up(ours)
                    measured["ours"] = 1000 * sw.seconds
                else:
                    stats = await tick((a, b))
                    measured["tick"] = stats["total_ms"]
            if rnd == 0:
                continue  # warm-up
            tick_ms.append(measured["tick"])
            pass_ms.append(measured["ours"])
            parts.append(stats)
    finally:
        for conn in (ours, writer, a, b):
            await conn.close()
    return {"tick_ms": tick_ms, "pass_ms": pass_ms, "parts": parts}


def run_size(dsn: str, loaded: int, size: int, rounds: int, new_rows: int
             ) -> dict[str, Any]:
    with Stopwatch() as sw:
        load_log(dsn, loaded + 1, size)
    load_s = sw.seconds
    with Stopwatch() as sw:
        rebuild_ours(dsn)
    rebuild_s = sw.seconds
    result = eventloop.run(_rounds, dsn, rounds, new_rows, size)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(AGREE_SQL).fetchone()
        plan = conn.execute(sql.SQL("EXPLAIN ") + stale_query("missions"),
                            {"table_name": "aiMissions"}).fetchall()
        counts = conn.execute(
            """SELECT (SELECT count(*) FROM public.sync_changes),
                      (SELECT count(*) FROM mana_ai.mission_snapshots),
                      (SELECT count(*) FROM mana_ai.agent_snapshots)""").fetchone()
    assert row is not None and counts is not None
    result.update({
        "log_rows": size, "log_rows_at_end": int(counts[0]),
        "missions": counts[1], "agents": counts[2],
        "new_rows": new_rows, "disagree": int(row[0]), "load_s": load_s,
        "rebuild_s": rebuild_s,
        "plan": " / ".join(p[0].strip().split("  (cost")[0] for p in plan[:4]),
    })
    return result


def parse_args(argv: list[str]) -> Any:
    parser = base_parser("Upstream's polling tick against our pass, on the same new rows.")
    parser.add_argument("--sizes", help="log sizes, comma list (10000,100000,1000000; "
                        "quick 2000,20000)")
    parser.add_argument("--rounds", type=int, help="measured rounds per size (5, quick 2)")
    parser.add_argument("--new-rows", type=int, default=100, help="new rows per round (100)")
    args = parser.parse_args(argv)
    default = "2000,20000" if args.quick else "10000,100000,1000000"
    args.sizes = sorted(int(x) for x in (args.sizes or default).split(",") if x.strip())
    args.rounds = args.rounds or (2 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    with bench_template(args, "tick", "bench_tick: upstream's polling tick against our pass "
                        "(issue 11)") as (srv, name):
        results = _measure(srv.dsn_for(name), args)
    rows: list[list[object]] = []
    for r in results:
        t, p = r["tick_ms"], r["pass_ms"]
        rows.append([r["log_rows"], r["missions"] + r["agents"], len(t), median(t), min(t),
                     max(t), median(p), min(p), max(p), median(t) / median(p)])
    print_table(
        f"taking in {args.new_rows} new rows (ms per round, median and min-max; rounds "
        "alternate which side goes first)",
        ["log rows", "records", "rounds", "tick", "min", "max", "our pass", "min", "max",
         "tick / pass"], rows)
    parts = []
    for r in results:
        med = {k: median([s[k] for s in r["parts"]]) for k in r["parts"][0]} if r["parts"] else {}
        parts.append([r["log_rows"], med.get("find_missions_ms"), med.get("find_agents_ms"),
                      med.get("apply_missions_ms"), med.get("apply_agents_ms"),
                      med.get("due_ms"),
                      int(med.get("pairs_missions", 0) + med.get("pairs_agents", 0)),
                      int(med.get("due", 0))])
    print_table(
        "where a tick goes (ms, medians; missions and agents run at once, so the parts "
        "overlap)",
        ["log rows", "find missions", "find agents", "read+fold+upsert missions",
         "agents", "due query", "stale pairs", "due"], parts)
    for r in results:
        note(f"{r['log_rows']:,} log rows: loaded in {r['load_s']:.0f} s, our snapshots "
             f"rebuilt by replay in {r['rebuild_s']:.0f} s; tick's GROUP BY plan: {r['plan']}")
    note("the baseline starts from our records without upstream's __fieldMeta stamps; the "
         "new rows are stamped later than anything before, so every field wins either way")
    note("the tick's figure includes its due query; our pass is the projection alone (the "
         "scheduler's pass, woken by the changed missions, is measured in the scheduler "
         "section)")
    note("our pass commits asynchronously, as the live consumer's work connection does; the "
         "tick's upserts commit one by one and durably, as upstream's autocommit statements")
    verdict("the tick and our pass end with the same records at every size",
            all(r["disagree"] == 0 for r in results))
    record("tick", [{k: v for k, v in r.items() if k != "parts"} for r in results])
    return 0 if all(r["disagree"] == 0 for r in results) else 1


def _measure(dsn: str, args: Any) -> list[dict[str, Any]]:
    results = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(tick_schema())
    loaded = 0
    for size in args.sizes:
        section(f"{size:,} log rows")
        res = run_size(dsn, loaded, size, args.rounds, args.new_rows)
        loaded = size
        note(f"tick {median(res['tick_ms']):.1f} ms, our pass {median(res['pass_ms']):.1f} ms "
             f"(medians of {len(res['tick_ms'])})")
        results.append(res)
    return results


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(sys.argv[1:]))
