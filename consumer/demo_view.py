"""The demo's live view: what the consumer is doing, from its own signals.

Where each number comes from:

- rows applied/s and lag: the consumer's Prometheus registry (mana_ai_snapshot_rows_applied_total,
  mana_ai_apply_lag_seconds), read in process;
- commit-to-snapshot latency: the writer notes when each COMMIT returned, the projection's
  on_applied hook notes when the record's snapshot committed (one monotonic clock);
- decisions and runs: the spans the scheduler and the runner emit ("mission.decision" with
  its `decision` attribute, "mission.run" with `run.outcome`), seen by a span processor, so
  the view shows what a trace backend would receive;
- iterations back in snapshots: each written-back iteration id is looked up in its mission's
  snapshot until it is there (the write-back came round through sync_changes, the trigger and
  the projection);
- quarantine: mana_ai.quarantine.

On a terminal the view is redrawn in place (rich's Live); otherwise it prints plain lines:
one per event and a summary every few seconds, which is what CI logs keep.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any, TextIO

import psycopg
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .apply import Applied
from .db import connect
from .metrics import REGISTRY
from .sql import load

KEEP = 6  # lines of the "last ..." panels
PLAIN_EVERY = 5.0  # seconds between summary lines in plain mode
WRITTEN_BACK = "written-back"
RETRY = "retry"  # an attempt that failed and will be tried again (the ledger's backoff)
TITLES = (
    "Projection",
    "Decisions",
    "Runs",
    "Last decisions",
    "Iterations back in snapshots",
    "Quarantine",
)


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def percentile(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Collector(SpanProcessor):
    """Gathers the view's numbers; safe to feed from the writer thread and the event loop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.pending: dict[tuple[str, str, str], float] = {}  # (table, user, id) -> commit
        self.latencies: deque[float] = deque(maxlen=5000)  # seconds, newest last
        self.decisions: Counter[str] = Counter()
        self.last_decisions: deque[tuple[str, str, str, str]] = deque(maxlen=KEEP)
        self.in_flight = 0
        self.done = 0
        self.failed = 0
        self.retried = 0
        # iteration id -> (user, mission, monotonic time of the write-back)
        self.awaiting: dict[str, tuple[str, str, float]] = {}
        self.applied_at: dict[tuple[str, str], float] = {}  # mission -> last snapshot commit
        self.arrived: list[tuple[str, str, str, float]] = []  # (user, mission, iteration, s)
        self.quarantined = 0
        self.last_quarantined: list[tuple[str, str]] = []
        self.events: deque[str] = deque()  # for plain mode, drained by the view
        self._rate: deque[tuple[float, float]] = deque(maxlen=64)  # (time, rows applied)

    # ------------------------------------------------------------------ feeds

    def on_commit(self, table: str, user: str, record_id: str) -> None:
        """The writer's COMMIT returned (writer thread)."""
        now = time.monotonic()
        with self.lock:
            self.pending.setdefault((table, user, record_id), now)

    def on_applied(self, applied: Applied) -> None:
        """A batch's snapshot writes committed (event loop)."""
        now = time.monotonic()
        keys = [("aiMissions", u, r) for u, r in applied.missions]
        keys += [("agents", u, r) for u, r in applied.agents]
        with self.lock:
            for key in keys:
                committed = self.pending.pop(key, None)
                if committed is not None:
                    self.latencies.append(now - committed)
            for mission in applied.missions:
                self.applied_at[mission] = now

    def unapplied(self) -> int:
        """Writes committed whose snapshot has not been seen yet."""
        with self.lock:
            return len(self.pending)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.name == "mission.run":
            with self.lock:
                self.in_flight += 1

    def on_end(self, span: ReadableSpan) -> None:
        attrs = span.attributes or {}
        if span.name == "mission.decision":
            decision = str(attrs.get("decision", "?"))
            who = str(attrs.get("agent.name") or attrs.get("agent.id") or "(no agent)")
            line = (str(attrs.get("user.id", "")), str(attrs.get("mission.id", "")), who,
                    decision)
            with self.lock:
                self.decisions[decision] += 1
                self.last_decisions.append(line)
                self.events.append(f"decision {decision:<22} {line[1]} of {line[0]} ({who})")
        elif span.name == "mission.run":
            outcome = attrs.get("run.outcome")
            ok = span.status.status_code is not StatusCode.ERROR and outcome == WRITTEN_BACK
            with self.lock:
                self.in_flight = max(0, self.in_flight - 1)
                if ok:
                    self.done += 1
                    iteration = attrs.get("iteration.id")
                    if iteration:
                        self.awaiting[str(iteration)] = (
                            str(attrs.get("user.id", "")),
                            str(attrs.get("mission.id", "")),
                            time.monotonic(),
                        )
                elif outcome == RETRY:
                    self.retried += 1
                    why = span.status.description or "error"
                    self.events.append(f"run retried  {attrs.get('mission.id')}: {why}")
                elif outcome is None and span.status.status_code is not StatusCode.ERROR:
                    # Cut off by the demo's own stop: given back to the ledger, not failed.
                    self.events.append(f"run stopped  {attrs.get('mission.id')}")
                else:
                    self.failed += 1
                    why = span.status.description or str(outcome or "error")
                    self.events.append(f"run failed   {attrs.get('mission.id')}: {why}")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # ------------------------------------------------------------------ database side

    def poll(self, conn: psycopg.Connection) -> None:
        """Look up awaited iterations in the snapshots, and the quarantine."""
        with self.lock:
            waiting = dict(self.awaiting)
        if waiting:
            ids = list(waiting)
            rows = conn.execute(
                load("demo/iterations"),
                {
                    "users": [waiting[i][0] for i in ids],
                    "missions": [waiting[i][1] for i in ids],
                    "iterations": ids,
                },
            ).fetchall()
            now = time.monotonic()
            with self.lock:
                for (iteration,) in rows:
                    user, mission, written = self.awaiting.pop(iteration)
                    seen = self.applied_at.get((user, mission), now)
                    took = max(0.0, (seen if seen >= written else now) - written)
                    self.arrived.append((user, mission, iteration, took))
                    self.events.append(
                        f"iteration    {iteration[:8]} back in the snapshot of {mission} "
                        f"({took * 1000:.0f} ms after the write-back)"
                    )
        quarantine = conn.execute(load("demo/quarantine"), {"limit": KEEP}).fetchall()
        with self.lock:
            total = int(quarantine[0][3]) if quarantine else 0
            if total > self.quarantined:
                for _cid, record_id, reason, _ in quarantine[: total - self.quarantined]:
                    self.events.append(f"quarantined  {record_id}: {reason}")
            self.quarantined = total
            self.last_quarantined = [(str(r[1]), str(r[2])) for r in quarantine]

    # ------------------------------------------------------------------ numbers

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        rows = _metric("mana_ai_snapshot_rows_applied_total")
        with self.lock:
            self._rate.append((now, rows))
            while len(self._rate) > 2 and now - self._rate[0][0] > 5.0:
                self._rate.popleft()
            t0, r0 = self._rate[0]
            rate = (rows - r0) / (now - t0) if now - t0 > 0.2 else 0.0
            recent = list(self.latencies)[-1000:]
            return {
                "elapsed": now - self.started,
                "rows": rows,
                "rate": rate,
                "p50": percentile(recent, 0.5),
                "p99": percentile(recent, 0.99),
                "lag": _metric("mana_ai_apply_lag_seconds"),
                "decisions": dict(self.decisions),
                "last_decisions": list(self.last_decisions),
                "in_flight": self.in_flight,
                "done": self.done,
                "failed": self.failed,
                "retried": self.retried,
                "arrived": len(self.arrived),
                "last_arrived": self.arrived[-KEEP:],
                "quarantined": self.quarantined,
                "last_quarantined": list(self.last_quarantined),
            }

    def drain_events(self) -> list[str]:
        with self.lock:
            events = list(self.events)
            self.events.clear()
        return events


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(s: dict[str, Any]) -> Group:
    """The view as rich renderables: three summary panels over three lists."""
    projection = Table.grid(padding=(0, 2))
    projection.add_row("rows applied", f"{s['rows']:.0f}")
    projection.add_row("rows/s", f"{s['rate']:.1f}")
    projection.add_row("latency p50", _ms(s["p50"]))
    projection.add_row("latency p99", _ms(s["p99"]))
    projection.add_row("lag", f"{s['lag']:.2f} s")

    decisions = Table.grid(padding=(0, 2))
    for kind, count in sorted(s["decisions"].items()):
        decisions.add_row(kind, str(count))
    if not s["decisions"]:
        decisions.add_row("(none yet)", "")

    runs = Table.grid(padding=(0, 2))
    runs.add_row("in flight", str(s["in_flight"]))
    runs.add_row("done", str(s["done"]))
    runs.add_row("retried", str(s["retried"]))
    runs.add_row("failed", str(s["failed"]))
    runs.add_row("back in snapshots", str(s["arrived"]))

    top = Table.grid(expand=True, padding=(0, 1))
    for _ in range(3):
        top.add_column(ratio=1)
    top.add_row(
        Panel(projection, title="Projection"),
        Panel(decisions, title="Decisions"),
        Panel(runs, title="Runs"),
    )

    last = Table(box=None, show_header=False, padding=(0, 1), expand=True)
    for user, mission, who, decision in s["last_decisions"]:
        style = "green" if decision == "ran" else "yellow"
        last.add_row(Text(decision, style=style), mission, user, who)

    back = Table(box=None, show_header=False, padding=(0, 1), expand=True)
    for user, mission, iteration, took in s["last_arrived"]:
        back.add_row(iteration[:8], mission, user, _ms(took))

    quarantine = Table(box=None, show_header=False, padding=(0, 1), expand=True)
    for record_id, reason in s["last_quarantined"]:
        quarantine.add_row(record_id, Text(reason, style="red"))

    return Group(
        Text(f"mana-ai consumer demo: {s['elapsed']:.0f} s, Ctrl-C stops", style="bold"),
        top,
        Panel(last, title="Last decisions"),
        Panel(back, title="Iterations back in snapshots"),
        Panel(quarantine, title=f"Quarantine ({s['quarantined']} rows)"),
    )


def plain_summary(s: dict[str, Any]) -> str:
    kinds = " ".join(f"{k}={v}" for k, v in sorted(s["decisions"].items())) or "none"
    return (
        f"[{s['elapsed']:5.1f} s] rows {s['rows']:.0f} ({s['rate']:.1f}/s), "
        f"latency p50 {_ms(s['p50'])} p99 {_ms(s['p99'])}, lag {s['lag']:.2f} s | "
        f"decisions {kinds} | runs in flight {s['in_flight']}, done {s['done']}, "
        f"retried {s['retried']}, failed {s['failed']}, back in snapshots {s['arrived']} | "
        f"quarantined {s['quarantined']}"
    )


class View:
    """Runs in a thread beside the consumer: polls the database and draws."""

    def __init__(
        self,
        collector: Collector,
        dsn: str,
        *,
        console: Console,
        live: bool,
        out: TextIO,
    ) -> None:
        self.collector = collector
        self.dsn = dsn
        self.console = console
        self.live = live
        self.out = out
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with connect(self.dsn, role="demo", autocommit=True) as conn:
                if self.live:
                    self._live(conn)
                else:
                    self._plain(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the demo
            self.error = exc

    def _live(self, conn: psycopg.Connection) -> None:
        with Live(
            render(self.collector.snapshot()),
            console=self.console,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while not self.stop.wait(0.25):
                self.collector.poll(conn)
                self.collector.drain_events()
                live.update(render(self.collector.snapshot()))
            self.collector.poll(conn)
            live.update(render(self.collector.snapshot()), refresh=True)

    def _plain(self, conn: psycopg.Connection) -> None:
        last = time.monotonic()
        while True:
            stopping = self.stop.wait(0.25)
            self.collector.poll(conn)
            for event in self.collector.drain_events():
                print(event, file=self.out, flush=True)
            if stopping or time.monotonic() - last >= PLAIN_EVERY:
                last = time.monotonic()
                print(plain_summary(self.collector.snapshot()), file=self.out, flush=True)
            if stopping:
                return
