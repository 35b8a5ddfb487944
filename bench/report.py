"""docs/benchmarks.md from the results `python -m bench` collected: pure text, no I/O.

The input is the run dict that bench.__main__ also writes as JSON beside the report:

    {"quick": bool, "started": ISO text, "seconds": float, "argv": [...],
     "commands": [...], "note": text or None, "load": {"start": [...], "end": [...]},
     "modules": [{"name", "status", "seconds", "argv", "commands",
                  "items": [{"section"} | {"note"} | {"verdict", "ok"} |
                            {"table", "headers", "rows"}],
                  "data": {...}}],
     "plots": [{"file": path relative to the report, "caption": text}]}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MACHINE = "machine"


def cell(value: object) -> str:
    """A table cell as Markdown: numbers like the console tables, pipes escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 10:
            return f"{value:.2f}"
        return f"{value:.3f}"  # ratios: the third digit matters
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    width = max([len(headers)] + [len(r) for r in rows]) if rows or headers else 0
    if width == 0:
        return []
    head = [cell(h) if h else " " for h in headers] + [" "] * (width - len(headers))
    numeric = [
        i > 0 and any(isinstance(r[i], int | float) and not isinstance(r[i], bool)
                      for r in rows if i < len(r))
        for i in range(width)
    ]
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for r in rows:
        cells = [cell(c) for c in r] + [""] * (width - len(r))
        out.append("| " + " | ".join(cells) + " |")
    return out


def machine_rows(run: dict[str, Any]) -> list[list[object]]:
    """The first machine table any module printed (each module starts its own server)."""
    for module in run.get("modules", []):
        for item in module.get("items", []):
            if item.get("table") == MACHINE:
                return [list(r) for r in item.get("rows", [])]
    return []


def verdicts(run: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [
        (m["name"], str(item["verdict"]), bool(item.get("ok")))
        for m in run.get("modules", [])
        for item in m.get("items", [])
        if "verdict" in item
    ]


def module_lines(module: dict[str, Any]) -> list[str]:
    """One module's section: its tables, headings, notes and goals in printed order."""
    status = module.get("status", 0)
    state = "ok" if status == 0 else f"FAILED (status {status})"
    lines = [f"## {module['name']}", "", f"{module.get('seconds', 0.0):.0f} s, {state}.", ""]
    notes: list[str] = []
    for item in module.get("items", []):
        if item.get("table") == MACHINE:
            continue
        if "note" in item or "verdict" in item:
            if "verdict" in item:
                met = "met" if item.get("ok") else "**MISSED**"
                notes.append(f"{met}: {item['verdict']}")
            else:
                notes.append(str(item["note"]))
            continue
        if notes:  # a run of notes becomes one list
            lines += [f"- {n}" for n in notes] + [""]
            notes = []
        if "section" in item:
            lines += [f"### {item['section']}", ""]
        elif "table" in item:
            lines += [f"**{cell(item['table'])}**", "",
                      *md_table(item.get("headers", []), item.get("rows", [])), ""]
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    return lines


def find(run: dict[str, Any], key: str) -> Any:
    """The raw data a module recorded under `key` (the first module that did), else None."""
    for module in run.get("modules", []):
        data = module.get("data") or {}
        if key in data:
            return data[key]
    return None


def spread(values: Sequence[float], unit: str = "", scale: float = 1.0) -> str:
    """'median (min-max)unit' of some runs; one run: just the value."""
    vals = sorted(v * scale for v in values if v is not None and v == v)
    if not vals:
        return "-"
    mid = len(vals) // 2
    med = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    if len(vals) == 1:
        return f"{cell(med)}{unit}"
    return f"{cell(med)}{unit} ({cell(vals[0])}-{cell(vals[-1])})"


def summary_rows(run: dict[str, Any]) -> list[list[object]]:
    """The headline figures, from the raw data of whichever modules ran."""
    rows: list[list[object]] = []
    for module in run.get("modules", []):
        for key, runs in (module.get("data") or {}).items():
            if not key.startswith("latency_runs_") or not runs:
                continue
            rate = key.removeprefix("latency_runs_")
            rows.append([f"commit to snapshot at {rate} rows/s, p50 / p99 / max (ms)",
                         " / ".join(spread([r.get(k) for r in runs]) for k in
                                    ("p50", "p99", "max"))
                         + f"; {len(runs)} run(s)"])
    for shape in find(run, "catchup_shapes") or []:
        rows.append([f"catch-up, {shape['rows']:,} rows over {shape['records']:,} records, "
                     f"{shape['path']} path (rows/s)", spread(shape["rates"])])
    for size in find(run, "tick") or []:
        tick, ours = size.get("tick_ms") or [], size.get("pass_ms") or []
        ratio = ""
        if tick and ours:
            mid_tick, mid_ours = sorted(tick)[len(tick) // 2], sorted(ours)[len(ours) // 2]
            ratio = f"; tick / pass x{mid_tick / mid_ours:.0f}"
        rows.append([f"{size.get('new_rows', 100)} new rows at {size['log_rows']:,} log rows: "
                     "polling tick / our pass (ms)",
                     f"{spread(tick)} / {spread(ours)}{ratio}"])
    for c in (find(run, "cost") or {}).get("summary", []):
        interval = "-" if c["low"] is None or c["high"] is None or c["low"] != c["low"] \
            else f"{c['low']:.3f}-{c['high']:.3f}"
        rows.append([f"writers' throughput, {c['variant']}, {c['mix']} % ours, "
                     f"{c['writers']} writer(s), x of no trigger",
                     f"x{c['ratio']:.3f} (95 % interval {interval}, {c['rounds']} rounds)"
                     + ("" if interval != "-" and (c["high"] < 0.95 or c["low"] > 0.95)
                        else "; does not exclude a 5 % cost")])
    mem = find(run, "memory")
    if mem:
        rows.append([f"RSS of consumer run beside {mem['missions']:,} missions under "
                     f"{mem['rate']} rows/s: ready / peak / steady (MiB)",
                     f"{cell(mem['ready_mib'])} / {cell(mem['peak_mib'])} / "
                     f"{cell(mem['steady_mib'])}"])
    return rows


def busy_sentence(run: dict[str, Any]) -> str:
    """Say so when other work kept the machine busy: a 1-minute load above half the cores
    before we started, or above 1.5 times the cores at the end (our own work included)."""
    cores = next((str(v) for k, v in machine_rows(run) if k == "nproc"), "")
    load = run.get("load") or {}
    start, end = (load.get("start") or [0.0])[0], (load.get("end") or [0.0])[0]
    if not cores.isdigit() or (start <= int(cores) / 2 and end <= 1.5 * int(cores)):
        return ""
    loads = [start, end]
    return (f"**The machine was busy with other work during this run** (1-minute load "
            f"average up to {max(loads):.1f} on {cores} cores): absolute figures are "
            "pessimistic and noisy.")


def time_lines(run: dict[str, Any]) -> list[str]:
    """Where the run's time went: each module against its share, the whole against the
    budget (the issue's limits: full run 20 minutes, quick 3)."""
    modules = run.get("modules", [])
    if not modules:
        return []
    rows: list[list[object]] = [
        [m["name"], float(m.get("seconds", 0.0)), m.get("budget"),
         "-" if m.get("budget") is None else ("yes" if m["seconds"] <= m["budget"] else "OVER")]
        for m in modules
    ]
    budget = run.get("budget")
    total = float(run.get("seconds", 0.0))
    rows.append(["whole run", total, budget,
                 "-" if budget is None else ("yes" if total <= budget else "OVER")])
    return ["## Time", "", *md_table(["module", "seconds", "share", "within"], rows), ""]


def render(run: dict[str, Any]) -> str:
    lines: list[str] = ["# Benchmarks", ""]
    size = "quick (smoke size: numbers are indicative only)" if run.get("quick") else "full size"
    lines += [
        f"Written by `make bench` on {run.get('started', '?')} ({size}, "
        f"{run.get('seconds', 0.0):.0f} s). Do not edit by hand: run it again. The raw "
        f"results of every run are in `{run.get('json_name', 'benchmarks.json')}` beside "
        "this file.",
        "",
    ]
    if run.get("note"):
        lines += [f"**Note.** {run['note']}", ""]
    load = run.get("load") or {}
    if load.get("start") or load.get("end"):
        lines += [
            "Load average (1/5/15 min) at the start "
            f"{' '.join(f'{x:.2f}' for x in load.get('start', []))}, at the end "
            f"{' '.join(f'{x:.2f}' for x in load.get('end', []))}: anything else running on "
            "the machine shows up in these figures; ratios measured side by side within one "
            "run are the figures to trust.",
            "",
        ]

    busy = busy_sentence(run)
    if busy:
        lines += [busy, ""]

    lines += ["## How these numbers were made", "", "```"]
    lines.append(" ".join(["python -m bench", *run.get("argv", [])]).rstrip())
    for module in run.get("modules", []):
        lines.append(" ".join(["python -m bench." + f"bench_{module['name']}",
                               *module.get("argv", [])]).rstrip())
    lines.append("```")
    external = [c for m in run.get("modules", []) for c in m.get("commands", [])]
    if external:
        lines += ["", "External commands the benchmarks ran:", "", "```", *external, "```"]
    lines.append("")

    rows = machine_rows(run)
    if rows:
        lines += ["## Machine", "", *md_table(["", ""], rows), ""]

    headline = summary_rows(run)
    if headline:
        lines += ["## Summary", "", "Medians, with min-max over runs in brackets.", "",
                  *md_table(["figure", "measured"], headline), ""]

    found = verdicts(run)
    if found:
        lines += ["## Goals", ""]
        lines += md_table(["module", "goal", "result"],
                          [[name, what, "met" if ok else "MISSED"] for name, what, ok in found])
        lines.append("")

    lines += time_lines(run)

    if run.get("plots"):
        lines += ["## Plots", ""]
        for plot in run["plots"]:
            lines += [f"![{plot['caption']}]({plot['file']})", "", f"*{plot['caption']}*", ""]

    for module in run.get("modules", []):
        lines += module_lines(module)
    return "\n".join(lines).rstrip() + "\n"
