"""The projection's benchmarks under their old name: latency, catch-up and trigger cost now
live in bench_latency, bench_catchup and bench_trigger; this runs the ones asked for, with
the options it always took, on one server.

    python -m bench.bench_projection [--quick] [--only latency|catchup|shapes|sweep|trigger]
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from bench import bench_catchup, bench_latency, bench_trigger
from bench.common import base_parser, bench_template


def parse_args(argv: list[str]) -> Any:
    parser = base_parser("Projection benchmarks: latency, catch-up throughput, trigger cost.")
    parser.add_argument("--only", action="append",
                        choices=["latency", "catchup", "shapes", "sweep", "trigger"],
                        help="run only these parts (repeatable; default latency and catchup, "
                        "which is the same as shapes)")
    bench_latency.add_arguments(parser)  # --runs is the latency's and the sweep's
    skip = {"--runs"}
    for module in (bench_catchup, bench_trigger):
        sub = base_parser("")
        module.add_arguments(sub)
        for action in sub._actions:
            if action.option_strings and not set(action.option_strings) & (
                    skip | {"-h", "--help", "--quick", "--database-url"}):
                parser._add_action(action)
    args = parser.parse_args(argv)
    runs = args.runs
    bench_latency.finish_args(args)
    args.sweep_default_runs = runs
    bench_catchup.finish_args(args)
    bench_trigger.finish_args(args)
    args.only = args.only or ["latency", "catchup"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    with bench_template(args, "projection", "bench_projection: latency, catch-up throughput, "
                        "trigger cost") as (srv, template):
        if "latency" in args.only:
            bench_latency.run(srv, template, args)
        parts = [p for p, asked in (("shapes", {"catchup", "shapes"}), ("sweep", {"sweep"}))
                 if asked & set(args.only)]
        if parts:
            bench_catchup.run(srv, template, args, parts)
        if "trigger" in args.only:
            bench_trigger.run(srv, template, args)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main(sys.argv[1:]))
