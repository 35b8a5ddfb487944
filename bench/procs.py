"""`consumer run` as a child process, for the benchmarks and the fault tests alike, and
what /proc says about a process (CPU seconds).

A benchmark or a fault scenario starts the consumer the way an operator would (its own
process, the database named by SYNC_DATABASE_URL), kills or stops it at will, and reads
what it printed: from a file (a killed process leaves its last words) or, with
`lines=True`, line by line with the monotonic time each line arrived.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence

# Projection only, on a free port: what most scenarios run.
FOLLOW = ("run", "--no-scheduler", "--metrics-port", "0")


def consumer_env(dsn: str | None = None,
                 extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a consumer child: ours, no trace export, the database by URL;
    `extra` sets variables (None removes one)."""
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
    if dsn is not None:
        env["SYNC_DATABASE_URL"] = dsn
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class ConsumerProcess:
    """`python -m consumer <command> <args>` in a child process. As a context manager it
    is started on entry (unless running) and killed on exit."""

    def __init__(self, dsn: str, args: Sequence[str] = (), *,
                 command: Sequence[str] = FOLLOW,
                 env: Mapping[str, str | None] | None = None, lines: bool = False) -> None:
        self.dsn = dsn
        self.args = [*command, *args]
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.lines: list[tuple[float, str]] | None = [] if lines else None
        self._log = tempfile.TemporaryFile()

    def start(self) -> ConsumerProcess:
        out = subprocess.PIPE if self.lines is not None else self._log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", *self.args],
            env=consumer_env(self.dsn, self.env), stdout=out, stderr=subprocess.STDOUT,
        )
        self.started = time.monotonic()
        if self.lines is not None:
            threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None and self.lines is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append((time.monotonic(), line))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def line_at(self, needle: str) -> float | None:
        """When the first line containing `needle` arrived (lines=True), else None."""
        return next((t for t, line in list(self.lines or []) if needle in line), None)

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(15)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not exit within `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def output(self) -> str:
        """Everything the process (and its predecessors in this object) printed."""
        if self.lines is not None:
            return "".join(line for _, line in list(self.lines))
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> ConsumerProcess:
        return self if self.alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


# --------------------------------------------------------------------------- /proc

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int, children: bool = False) -> float | None:
    """CPU seconds (user + system) of a live process from /proc; with `children`, plus its
    reaped children's (a postmaster's exited backends). None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): utime = field 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> set[int]:
    """The processes whose parent is `pid` (a zombie counts until it is reaped)."""
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and proc_ppid(int(e)) == pid}


def server_cpu(postmaster: int) -> float | None:
    """CPU seconds of a PostgreSQL server on this machine: the postmaster, its reaped
    children (exited backends) and its live children. None where /proc cannot tell."""
    total = proc_cpu(postmaster, children=True)
    if total is None:
        return None
    return total + sum(proc_cpu(pid) or 0.0 for pid in children_of(postmaster))


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend that runs on this machine (else None: no server split)."""
    if proc_cpu(backend_pid) is None:
        return None
    return proc_ppid(backend_pid)
