"""`consumer demo`: the whole loop, bounded for CI, and its live view in a pseudo-terminal.

The first test runs the demo for 25 s against the test server (`--database-url`, spans
printed with `--traces console`), as a separate process like `make run`, and then checks
the database: rows applied, at least four
kinds of decision, iterations written back by the local planner and found in the
snapshots, an interval mission that ran twice, only the writer's deliberately malformed
rows in quarantine, `consumer replay --verify` exiting 0, and no warning at shutdown.

The second runs it on its own embedded PostgreSQL in a pseudo-terminal, stops it with
Ctrl-C as a person would, and checks the redrawn view and the clean stop (PostgreSQL too).
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from consumer.demo_planner import UNANSWERABLE
from consumer.demo_view import TITLES

ENV = {
    **os.environ,
    "METRICS_PORT": "0",  # other suites on this machine may hold 9464
    "OTEL_TRACES_EXPORTER": "none",
    "COLUMNS": "140",
    "LINES": "50",
}
ENV.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
# Shutdown noise the issue names; any of these fails the test.
SHUTDOWN_NOISE = re.compile(
    r"query cancellation interrupted|discarding closed connection|error ignored terminating|"
    r"Traceback|Task exception was never retrieved|ResourceWarning|was never awaited"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _warnings(stderr: str) -> list[str]:
    """WARNING/ERROR lines, except the one the demo provokes on purpose (the planner's
    prose answer to the unanswerable mission is a parse failure, logged as a warning)."""
    bad = []
    for line in stderr.splitlines():
        if not re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line):
            continue
        if "mission-riddle-" in line:
            continue
        bad.append(line)
    return bad


def test_demo_runs_the_whole_loop(db: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "demo", "--seconds", "25", "--database-url", db,
         "--traces", "console"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]
    # stderr: the log. (stdout carries the printed spans, whose exception events hold
    # stack traces on purpose.)
    assert not SHUTDOWN_NOISE.search(err), err[-3000:]
    assert _warnings(err) == [], err[-3000:]
    # --traces console: the spans of the whole loop are printed.
    assert "traces: printed to the console" in err
    for name in ("mission.decision", "mission.run", "planner.request", "runner.writeback"):
        assert f'"name": "{name}"' in out, name

    kinds = set(re.findall(r"^decision (\S+)", out, re.M))
    assert len(kinds) >= 4, kinds
    assert "ran" in kinds
    assert re.search(r"^iteration\s+\w+ back in the snapshot of ", out, re.M)

    with psycopg.connect(db) as conn:
        applied = conn.execute(
            "SELECT count(*) FROM mana_ai.mission_snapshots"
        ).fetchone()
        assert applied is not None and applied[0] >= 8
        # Iterations the runner wrote (source "server"), as the snapshots hold them.
        runs = conn.execute(
            """SELECT s.mission_id, s.record->'cadence'->>'kind', count(*)
               FROM mana_ai.mission_snapshots s,
                    jsonb_array_elements(s.record->'iterations') it
               WHERE it->>'source' = 'server'
               GROUP BY 1, 2"""
        ).fetchall()
        assert sum(n for _, _, n in runs) >= 4, runs
        assert any(kind == "interval" and n >= 2 for _, kind, n in runs), runs
        # The unanswerable mission got no iteration (its run failed, nothing written).
        assert not any(m.startswith("mission-riddle-") for m, _, _ in runs)
        riddle = conn.execute(
            "SELECT record->>'title' FROM mana_ai.mission_snapshots"
            " WHERE mission_id LIKE 'mission-riddle-%'"
        ).fetchone()
        assert riddle is not None and UNANSWERABLE in riddle[0]
        # Quarantine holds the malformed rows the writer sent on purpose, and nothing else.
        quarantined = conn.execute(
            "SELECT raw->>'record_id', reason FROM mana_ai.quarantine"
        ).fetchall()
        assert len(quarantined) >= 2
        assert all(rid.startswith("bad-") for rid, _ in quarantined), quarantined

    verify = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--verify", "--database-url", db],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not SHUTDOWN_NOISE.search(verify.stderr), verify.stderr


def _run_in_pty(argv: list[str], *, interrupt_after: float, limit: float = 90.0) -> tuple[int, str]:
    """Run argv on a pseudo-terminal, press Ctrl-C after `interrupt_after` seconds of
    view, return (exit status, everything it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execvpe(argv[0], argv, ENV)
    chunks: list[bytes] = []
    started = time.monotonic()
    view_seen_at: float | None = None
    interrupted = False
    try:
        while time.monotonic() - started < limit:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if view_seen_at is None and b"Projection" in chunk:
                    view_seen_at = time.monotonic()
            if (
                not interrupted
                and view_seen_at is not None
                and time.monotonic() - view_seen_at > interrupt_after
            ):
                os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
                interrupted = True
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_live_view_in_a_terminal_and_ctrl_c() -> None:
    # Not pytest's tmp_path: as root the server runs as a user of its own, and concurrent
    # pytest sessions reset pytest's base directory to 0700, locking that user out.
    base = Path(tempfile.mkdtemp(prefix="mana-ai-demo-"))
    base.chmod(0o755)
    data = base / "data"
    try:
        code, raw = _run_in_pty(
            [sys.executable, "-m", "consumer", "demo", "--data-dir", str(data)],
            interrupt_after=4.0,
        )
        kept = (data / "pgdata" / "PG_VERSION").exists()
        running = (data / "pgdata" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = ANSI.sub("", raw)
    assert code == 0, text[-3000:]
    for title in TITLES:
        assert title in text, title
    # Frames: Live moves the cursor up over the previous frame before drawing the next.
    frames = [ANSI.sub("", f) for f in re.split(r"(?:\x1b\[2K\x1b\[1A)+\x1b\[2K", raw)]
    applied = [int(m.group(1)) for f in frames if (m := re.search(r"rows applied\s+(\d+)", f))]
    assert len(applied) >= 3, len(frames)
    assert len(set(applied)) > 1 and applied[-1] > applied[0], applied
    decided = [len(re.findall(r"\b(?:ran|skipped-[a-z-]+)\s+\d+", f)) for f in frames]
    assert max(decided) >= 4, "fewer than four kinds of decision in the view"
    assert not SHUTDOWN_NOISE.search(text), text[-3000:]
    assert _warnings(text) == [], text[-3000:]
    assert "PostgreSQL stopped" in text
    # No collector configured: the demo says where the traces go.
    assert "OTEL_EXPORTER_OTLP_ENDPOINT is not set" in text
    # The server is down and its data kept for the next `make run`.
    assert kept and not running
