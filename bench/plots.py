"""The report's plots (PNG, matplotlib from the `bench` extra), drawn from the raw data the
modules recorded with bench.common.record:

    projection  "latency":        {rate: [commit-to-snapshot ms, ...]}
    projection  "catchup_shapes": [{"rows", "records", "path", "rates": [rows/s, ...]}]
    tick        "tick":           [{"log_rows", "tick_ms": [...], "pass_ms": [...]}]
    memory      "memory":         {"samples": [[seconds, MiB], ...], "peak_mib", ...}

A plot whose data is absent (the module did not run) is left out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

from bench.report import find  # noqa: E402


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_cdf(data: dict[str, list[float]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lows = []
    for rate, values in sorted(data.items(), key=lambda kv: float(kv[0])):
        xs = sorted(v for v in values if v is not None and v > 0)
        if xs:
            lows.append(xs[len(xs) // 1000])
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post",
                label=f"{float(rate):,.0f} rows/s (n={len(xs):,}, "
                      f"p50 {statistics.median(xs):.2f} ms)")
    ax.set_xscale("log")
    if lows:  # start at the 0.1th percentile: a stray near-zero sample would squash the rest
        ax.set_xlim(left=min(lows) * 0.8)
    ax.set_xlabel("commit to snapshot applied (ms, log scale)")
    ax.set_ylabel("fraction of rows")
    ax.set_ylim(0, 1.01)
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Latency CDF, one mission per writer transaction (all runs)")
    _save(fig, path)
    return "commit-to-snapshot latency CDF at each write rate"


def catchup_shapes(data: list[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    paths = sorted({d["path"] for d in data})
    shapes = sorted({(d["rows"], d["records"]) for d in data}, key=lambda s: (s[0], s[1]))
    width = 0.8 / max(len(paths), 1)
    for j, p in enumerate(paths):
        meds, los, his = [], [], []
        for shape in shapes:
            rates = next((d["rates"] for d in data
                          if d["path"] == p and (d["rows"], d["records"]) == shape), [])
            med = statistics.median(rates) if rates else 0.0
            meds.append(med)
            los.append(med - min(rates) if rates else 0.0)
            his.append(max(rates) - med if rates else 0.0)
        xs = [i + (j - (len(paths) - 1) / 2) * width for i in range(len(shapes))]
        ax.bar(xs, meds, width, yerr=[los, his], capsize=3, label=f"{p} path")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([f"{r:,} rows\nover {n:,} records" for r, n in shapes])
    ax.set_ylabel("rows/s (median, bars: min-max)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    ax.set_title("Catch-up throughput by backlog shape")
    _save(fig, path)
    return "catch-up rows/s by backlog shape (rows per record)"


def tick_cost(data: list[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    data = sorted(data, key=lambda d: d["log_rows"])
    xs = [d["log_rows"] for d in data]
    for key, label, marker in (("tick_ms", "upstream polling tick (baseline)", "o"),
                               ("pass_ms", "our pass", "s")):
        meds = [statistics.median(d[key]) for d in data]
        lo = [m - min(d[key]) for m, d in zip(meds, data, strict=True)]
        hi = [max(d[key]) - m for m, d in zip(meds, data, strict=True)]
        ax.errorbar(xs, meds, yerr=[lo, hi], marker=marker, capsize=3, label=label)
    new = data[0].get("new_rows", 100) if data else 100
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows of ai tables in the log")
    ax.set_ylabel(f"ms to take in {new} new rows (median, min-max)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Polling tick against our pass, same new rows")
    _save(fig, path)
    return f"cost of taking in {new} new rows against log size: polling tick and our pass"


def rss(data: dict[str, Any], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    samples = [s for s in data.get("samples", []) if s[1] is not None]
    ax.plot([s[0] for s in samples], [s[1] for s in samples], lw=1.2)
    ax.axhline(data.get("peak_mib", 0), color="grey", ls=":", lw=0.8, label="peak (VmHWM)")
    top = max([data.get("peak_mib") or 0.0] + [s[1] for s in samples])
    ax.set_ylim(0, top * 1.15 or 1)
    ax.set_xlabel("seconds of traffic")
    ax.set_ylabel("RSS (MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"consumer run beside {data.get('missions', 0):,} missions, "
                 f"{data.get('rate', 0)} rows/s asked")
    _save(fig, path)
    return "resident set of consumer run during the traffic"


PLOTS: tuple[tuple[str, str, Callable[[Any, Path], str]], ...] = (
    ("latency", "latency-cdf", latency_cdf),
    ("catchup_shapes", "catchup", catchup_shapes),
    ("tick", "tick-vs-pass", tick_cost),
    ("memory", "rss", rss),
)


def draw_all(run: dict[str, Any], out: Path, prefix: str) -> list[dict[str, str]]:
    """Draw every plot whose data is present into out/prefix/; returns their entries."""
    drawn = []
    folder = out / prefix
    for key, name, draw in PLOTS:
        data = find(run, key)
        if not data:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        caption = draw(data, folder / f"{name}.png")
        drawn.append({"file": f"{prefix}/{name}.png", "caption": caption})
    return drawn
