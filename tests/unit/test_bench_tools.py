"""The benchmark's pure parts: upstream's polling fold (the baseline), the paired-ratio
interval and the report writer. No timing is asserted here."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import report
from bench.baseline import FIELD_META_KEY, Row, field_meta_time, fold, js_iso, js_truthy, seed_row
from bench.common import ratio_interval, t_quantile

T0 = datetime(2025, 6, 1, 9, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_field_meta_time_shapes() -> None:
    assert field_meta_time("2025-06-01T09:00:00.000Z") == "2025-06-01T09:00:00.000Z"
    assert field_meta_time({"at": "2025-06-01T09:00:00Z", "actor": {}}) == "2025-06-01T09:00:00Z"
    assert field_meta_time({"at": 5}) == ""
    assert field_meta_time(None) == ""
    assert field_meta_time(17) == ""


def test_js_iso_is_utc_milliseconds() -> None:
    assert js_iso(T0) == "2025-06-01T09:00:00.123Z"
    plus2 = datetime(2025, 6, 1, 11, 0, 0, tzinfo=UTC).astimezone(
        datetime.now().astimezone().tzinfo)
    assert js_iso(plus2) == "2025-06-01T11:00:00.000Z"


def test_first_row_creates_the_record_and_data_id_wins() -> None:
    merged = fold([Row("m1", "insert", {"title": "a", "id": "own"}, {"title": "S1"}, at(0))])
    assert merged == {"id": "own", "title": "a", FIELD_META_KEY: {"title": "S1"}}


def test_first_row_clocks_only_from_its_field_meta() -> None:
    rows = [
        # 'state' has no stamp: any later write wins it, even one stamped earlier.
        Row("m1", "insert", {"title": "a", "state": "active"}, {"title": "2025-06-01T10:00:00Z"},
            at(0)),
        Row("m1", "update", {"title": "b", "state": "paused"},
            {"title": "2025-06-01T09:59:59Z", "state": "2000-01-01T00:00:00Z"}, at(1)),
    ]
    merged = fold(rows)
    assert merged is not None
    assert merged["title"] == "a"  # stamped earlier than its clock: loses
    assert merged["state"] == "paused"  # no clock: wins
    assert merged[FIELD_META_KEY] == {"title": "2025-06-01T10:00:00Z",
                                      "state": "2000-01-01T00:00:00Z"}


def test_later_row_without_stamp_uses_created_at_and_ties_go_to_the_later_row() -> None:
    stamp = js_iso(at(5))
    rows = [
        Row("m1", "insert", {"n": 1}, {"n": stamp}, at(0)),
        Row("m1", "update", {"n": 2}, {}, at(5)),  # created_at spelled as the stamp: >= wins
    ]
    merged = fold(rows)
    assert merged is not None and merged["n"] == 2


def test_stamps_compare_as_text_like_upstream() -> None:
    # '+' sorts before 'Z', so the same instant spelled with an offset loses to the 'Z'
    # spelling: upstream's quirk, kept in the baseline (our merge compares instants).
    rows = [
        Row("m1", "insert", {"n": 1}, {"n": "2025-06-01T10:00:00.000Z"}, at(0)),
        Row("m1", "update", {"n": 2}, {"n": "2025-06-01T10:00:00.000+00:00"}, at(1)),
    ]
    merged = fold(rows)
    assert merged is not None and merged["n"] == 1


def test_delete_anywhere_drops_the_record() -> None:
    rows = [
        Row("m1", "insert", {"n": 1}, {}, at(0)),
        Row("m1", "delete", None, None, at(1)),
        Row("m1", "update", {"n": 2}, {}, at(2)),
    ]
    assert fold(rows) is None


@pytest.mark.parametrize(("value", "dropped"), [
    ("2025-06-01", True), ("", False), (0, False), (1, True), (True, True), (False, False),
    (None, False), ([], True), ({}, True),
])
def test_agent_deleted_when_deleted_at_is_truthy(value: object, dropped: bool) -> None:
    rows = [Row("a1", "insert", {"name": "x", "deletedAt": value}, {}, at(0))]
    assert (fold(rows, agent=True) is None) is dropped
    assert fold(rows, agent=False) is not None  # missions keep deletedAt in the record
    assert js_truthy(value) is dropped


def test_stored_snapshot_is_fed_back_as_the_first_row() -> None:
    stored = {"id": "m1", "title": "a", "state": "active",
              FIELD_META_KEY: {"title": "2025-06-01T10:00:00Z"}}
    rows = [
        seed_row("m1", stored, at(0)),
        Row("m1", "update", {"title": "old", "state": "paused"},
            {"title": "2025-06-01T09:00:00Z"}, at(10)),
    ]
    merged = fold(rows)
    assert merged is not None
    assert merged["title"] == "a"  # the stored stamp still guards it
    assert merged["state"] == "paused"  # no stored stamp: the new row wins
    assert merged[FIELD_META_KEY]["state"] == js_iso(at(10))


def test_ratio_interval_on_log_ratios() -> None:
    ratio, lo, hi = ratio_interval([0.9, 0.9, 0.9, 0.9])
    assert ratio == pytest.approx(0.9) and lo == pytest.approx(0.9) and hi == pytest.approx(0.9)
    ratio, lo, hi = ratio_interval([0.8, 1.0, 0.9, 0.95, 0.85])
    assert lo < ratio < hi
    assert ratio == pytest.approx(math.exp(sum(map(math.log, [0.8, 1.0, 0.9, 0.95, 0.85])) / 5))
    assert math.isnan(ratio_interval([0.9])[1])
    assert t_quantile(4) == pytest.approx(2.776)
    assert t_quantile(200) == pytest.approx(1.972, abs=0.002)
    assert t_quantile(100, 0.90) == pytest.approx(1.660, abs=0.002)


def _run() -> dict:
    return {
        "quick": True, "started": "2026-01-01 10:00 UTC", "seconds": 12.0,
        "argv": ["--quick"], "note": "The machine was shared.",
        "load": {"start": [1.0, 0.5, 0.2], "end": [1.5, 0.7, 0.3]},
        "plots": [{"file": "benchmarks/tick-vs-pass.png", "caption": "tick against pass"}],
        "modules": [
            {"name": "tick", "status": 0, "seconds": 10.0, "argv": ["--quick"],
             "commands": ["pgbench -n -T 2 -f x.sql"],
             "items": [
                 {"table": "machine", "headers": ["", ""], "rows": [["nproc", "2"]]},
                 {"section": "10,000 log rows"},
                 {"note": "a | note"},
                 {"table": "cost", "headers": ["log rows", "tick", "ok"],
                  "rows": [[10000, 129.456, True], [100000, None, False]]},
                 {"verdict": "same records", "ok": True},
             ], "data": {}},
            {"name": "cost", "status": 1, "seconds": 1.0, "argv": [], "commands": [],
             "items": [{"table": "machine", "headers": ["", ""], "rows": [["nproc", "4"]]},
                       {"verdict": "x0.95", "ok": False}], "data": {}},
        ],
    }


def test_report_renders_machine_once_commands_tables_and_goals() -> None:
    text = report.render(_run())
    assert text.count("## Machine") == 1
    assert "| nproc | 2 |" in text and "| nproc | 4 |" not in text
    assert "The machine was shared." in text
    assert "python -m bench --quick" in text and "python -m bench.bench_tick --quick" in text
    assert "pgbench -n -T 2 -f x.sql" in text
    assert "| log rows | tick | ok |" in text
    assert "|---|---:|---|" in text
    assert "| 10,000 | 129.5 | yes |" in text
    assert "| 100,000 | - | no |" in text
    assert "a \\| note" not in text and "- a | note" in text  # notes are not table cells
    assert "| tick | same records | met |" in text and "| cost | x0.95 | MISSED |" in text
    assert "FAILED (status 1)" in text
    assert "![tick against pass](benchmarks/tick-vs-pass.png)" in text
    assert "quick (smoke size" in text
    assert "The machine was busy" not in text  # load 1.0 before, 1.5 after, on 2 cores
    run = _run()
    run["load"]["end"] = [4.0, 2.0, 1.0]
    assert "load average up to 4.0 on 2 cores" in report.render(run)
    run["load"] = {"start": [1.2, 1.0, 1.0], "end": [2.0, 1.0, 1.0]}
    assert "load average up to 2.0 on 2 cores" in report.render(run)


def test_report_cells() -> None:
    assert report.cell(float("nan")) == "-"
    assert report.cell(12345.6) == "12,346"
    assert report.cell(0.1234) == "0.123"
    assert report.cell(12.345) == "12.35"
    assert report.cell("a|b") == "a\\|b"
    assert report.md_table([], []) == []


def test_pgbench_writers_mix_by_script_weights() -> None:
    from bench.bench_cost import pgbench_cmd

    scripts = {"ours": "o.sql", "other": "x.sql"}
    cmd = pgbench_cmd("pgbench", "DSN", scripts, 4, 10, 2)
    assert cmd[-1] == "DSN" and cmd[cmd.index("-c") + 1] == "4" and cmd[cmd.index("-T") + 1] == "2"
    assert "o.sql@10" in cmd and "x.sql@90" in cmd
    assert pgbench_cmd("pgbench", "DSN", scripts, 1, 100, 1).count("-f") == 1


def test_cost_split_per_transaction_and_per_ring() -> None:
    from bench.bench_cost import split_rows

    def arm(server: float, writers: float, listener: float = 0.0, rings: float = 0.0) -> dict:
        return {"txns": 1000.0, "server_s": server, "writers_s": writers,
                "listener_s": listener, "rings": rings}

    block = {"writers": 2, "mix": 10, "cpu": [], "split": {
        "none": [arm(0.30, 0.10), arm(0.32, 0.10), arm(0.34, 0.10)],
        "trigger": [arm(0.33, 0.10)],
        "listener": [arm(0.33, 0.10, 0.02, 100), arm(0.33, 0.10, 0.02, 100)],
    }}
    rows = {r[0]: r for r in split_rows([block])}
    none, trigger, listener = rows["none"], rows["trigger"], rows["listener"]
    assert none[4:7] == [pytest.approx(320), pytest.approx(100), 0.0]  # medians, us/txn
    assert trigger[9] == pytest.approx(10) and trigger[10] == pytest.approx(430 / 420)
    assert listener[6] == pytest.approx(20) and listener[7] == pytest.approx(200)  # per ring
    assert listener[9] == pytest.approx(30)
    consumer_block = {"writers": 2, "mix": 10, "split": {
        "none": [arm(0.30, 0.10)], "consumer": [arm(0.30, 0.10)]},
        "cpu": [{"client_s": 0.05, "rows": 100.0}]}  # 100 rows of ours: 1,000 transactions
    consumer = {r[0]: r for r in split_rows([consumer_block])}["consumer"]
    assert consumer[6] == pytest.approx(50) and consumer[9] == pytest.approx(50)
    assert split_rows([{"writers": 1, "mix": 10, "cpu": [], "split": {}}]) == []


def test_report_command_line_hides_machine_specifics() -> None:
    from bench.__main__ import _parse, _shown

    argv = ["--quick", "--database-url", "postgresql://h/db", "--out", "somewhere", "tick",
            "--note", "shared machine"]
    args, _extra = _parse(argv)
    assert _shown(argv, args) == ["--quick", "tick"]


def test_summary_pulls_headline_figures_from_the_raw_data() -> None:
    run = _run()
    run["modules"][0]["data"] = {
        "latency_runs_500": [{"p50": 1.5, "p99": 4.0, "max": 9.0},
                             {"p50": 2.5, "p99": 5.0, "max": 7.0},
                             {"p50": 2.0, "p99": 4.5, "max": 8.0}],
        "catchup_shapes": [{"rows": 200000, "records": 2000, "path": "journal",
                            "rates": [8000.0, 9000.0]}],
        "tick": [{"log_rows": 10000, "new_rows": 100, "tick_ms": [120.0, 130.0, 140.0],
                  "pass_ms": [12.0, 13.0, 14.0]}],
        "cost": {"summary": [
            {"variant": "listener", "writers": 2, "mix": 10, "ratio": 0.9, "low": 0.85,
             "high": 0.94, "rounds": 8},
            {"variant": "trigger", "writers": 1, "mix": 10, "ratio": 0.99, "low": 0.93,
             "high": 1.02, "rounds": 8}]},
        "memory": {"missions": 1000000, "rate": 500, "ready_mib": 60.0, "peak_mib": 72.0,
                   "steady_mib": 70.0},
    }
    rows = dict((str(a), str(b)) for a, b in report.summary_rows(run))
    assert rows["commit to snapshot at 500 rows/s, p50 / p99 / max (ms)"] == (
        "2.000 (1.500-2.500) / 4.500 (4.000-5.000) / 8.000 (7.000-9.000); 3 run(s)")
    assert rows["catch-up, 200,000 rows over 2,000 records, journal path (rows/s)"] == (
        "8,500 (8,000-9,000)")
    assert rows["100 new rows at 10,000 log rows: polling tick / our pass (ms)"].endswith("x10")
    listener = rows["writers' throughput, listener, 10 % ours, 2 writer(s), x of no trigger"]
    assert "0.850-0.940" in listener and "does not exclude" not in listener
    trigger = rows["writers' throughput, trigger, 10 % ours, 1 writer(s), x of no trigger"]
    assert trigger.endswith("does not exclude a 5 % cost")
    assert "60.00 / 72.00 / 70.00" in "".join(rows.values())
    assert "## Summary" in report.render(run)


def test_every_module_has_a_main_and_a_share_of_the_time() -> None:
    import importlib

    from bench.__main__ import BUDGETS, EXTRA, LIMIT_FULL, LIMIT_QUICK, MODULES

    for name in MODULES + EXTRA:
        assert callable(importlib.import_module(f"bench.bench_{name}").main), name
    assert set(BUDGETS) == set(MODULES)
    # The shares leave a margin under the limits (full 20 min, quick 3).
    assert sum(full for full, _ in BUDGETS.values()) <= 0.9 * LIMIT_FULL
    assert sum(quick for _, quick in BUDGETS.values()) <= 0.9 * LIMIT_QUICK


def test_projection_alias_keeps_its_options() -> None:
    from bench import bench_projection

    args = bench_projection.parse_args(["--only", "shapes", "--quick", "--shapes", "100,1000",
                                        "--runs", "2", "--inserts", "5"])
    assert args.only == ["shapes"] and args.shapes == [100, 1000]
    assert args.runs == 2 and args.sweep_default_runs == 2 and args.inserts == 5
    full = bench_projection.parse_args([])
    assert full.only == ["latency", "catchup"] and full.rates == [500.0, 2000.0]


def test_report_shows_time_per_module_against_its_share() -> None:
    run = _run()
    run["budget"] = 180.0
    run["modules"][0]["budget"] = 8.0
    text = report.render(run)
    assert "## Time" in text
    assert "| tick | 10.00 | 8.000 | OVER |" in text
    assert "| cost | 1.000 | - | - |" in text
    assert "| whole run | 12.00 | 180.0 | yes |" in text


def test_benchmark_sql_files_are_found() -> None:
    from bench.common import bench_sql

    assert "generate_series" in bench_sql("fixture_backlog")
    assert "CREATE FUNCTION" in bench_sql("trigger_diagnostics")


def test_due_mission_spells_next_run_at_as_the_app_does() -> None:
    from datetime import timezone

    from bench.fixtures import due_mission

    due = datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert due_mission("m1", due)["nextRunAt"] == "2026-01-01T10:00:00.123Z"
    plus2 = due_mission("m1", due, offset=timezone(timedelta(hours=2)), agent_id="a1")
    assert plus2["nextRunAt"] == "2026-01-01T12:00:00.123+02:00" and plus2["agentId"] == "a1"
    assert "agentId" not in due_mission("m1", due)


def test_the_statement_timer_names_the_projections_own_statements() -> None:
    # The latency report's per-pass table is only as good as these labels: the live path's
    # read and its write (with or without a record) must not fall into "other".
    from bench.statements import StatementTimer
    from consumer.apply import LIVE, _write_query
    from consumer.sql import load

    label = StatementTimer.label
    assert label(load("journal/read")) == "journal read"
    for names in ({"clocks", "due", "missions", "moved"}, {"clocks", "agents"}):
        assert label(_write_query(LIVE, frozenset(names), False).decode()) == (
            "snapshots write (+ CAS)"
        )
    assert label(_write_query(LIVE, frozenset({"quarantined", "moved"}), True).decode()) == (
        "quarantine (+ CAS)"
    )
    assert label(_write_query(LIVE, frozenset({"moved"}), False).decode()) == "checkpoint CAS"
    assert label(load("journal/prune")) == "journal prune"


def test_a_module_help_writes_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    # --database-url: the shared server is then only named, never started.
    code = main(["--database-url", "postgresql://nowhere/db", "--out", str(tmp_path),
                 "tick", "--", "--help"])
    assert code == 0
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr().out
    assert "--rounds" in out or "usage" in out
    assert "tick (exited, nothing measured)" in out
