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
        return f"{value:.2f}"
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

    found = verdicts(run)
    if found:
        lines += ["## Goals", ""]
        lines += md_table(["module", "goal", "result"],
                          [[name, what, "met" if ok else "MISSED"] for name, what, ok in found])
        lines.append("")

    if run.get("plots"):
        lines += ["## Plots", ""]
        for plot in run["plots"]:
            lines += [f"![{plot['caption']}]({plot['file']})", "", f"*{plot['caption']}*", ""]

    for module in run.get("modules", []):
        lines += module_lines(module)
    return "\n".join(lines).rstrip() + "\n"
