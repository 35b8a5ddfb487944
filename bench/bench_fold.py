"""Client fold micro-benchmark: a plain script, no database.

Times the client's CPU for a catch-up window in-process: `Window.add` over journal rows
(validate, merge, instants) in reads of `--batch` rows, then per record what the window's
write computes before anything goes to the server (encode_state, materialize, the due
instant, last_applied_at). The rows are built like bench/sql/fixture_backlog.sql builds
the log: `--rows` rows over `--records` records (4 in 5 missions), the first row of each
record an insert, the rest edits, field_meta alternating the four stamp spellings, the
last round deleting 1 agent in 97. Prints the median and min-max of `--runs` runs, in µs
of this process's CPU time per row (wall time would count other work on the machine).

    python -m bench.bench_fold [--rows 200000] [--records 20000] [--runs 7] [--batch 2000]

Only the package's public names are used, so the same script times another checkout
side by side (run it with that checkout first on PYTHONPATH; one from 17454b7 on, which
has apply.CollectorPause).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from consumer.apply import CollectorPause, Window
from consumer.decisions import due_instant
from consumer.instants import from_us
from consumer.journal import JournalRow
from consumer.merge import encode_state, materialize

_START = datetime(2025, 1, 1, tzinfo=UTC)


def _stamp(created: datetime, i: int) -> str:
    at = created - timedelta(milliseconds=3)
    if i % 2 == 0:
        return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"


def build_rows(rows: int, records: int, users: int = 1000) -> list[JournalRow]:
    """Journal rows in journal order, their JSON spelled as jsonb::text spells it."""
    missions = records * 4 // 5
    out: list[JournalRow] = []
    for i in range(1, rows + 1):
        r = (i - 1) % records
        created = _START + timedelta(milliseconds=i)
        stamp = _stamp(created, i)
        is_mission = r < missions
        if i <= records:
            op = "insert"
        elif not is_mission and r % 97 == 0 and i > rows - records:
            op = "delete"
        else:
            op = "update"
        data: dict[str, object] | None
        if op == "delete":
            data = None
        elif op == "insert" and is_mission:
            data = {"title": f"Weekly competitor scan #{r}",
                    "objective": "Summarise new competitor announcements; flag pricing changes.",
                    "state": "active", "agentId": f"agent-{missions + r % (records - missions)}",
                    "cadence": {"kind": "interval", "everyMinutes": 60},
                    "nextRunAt": stamp, "createdAt": stamp, "updatedAt": stamp}
        elif op == "insert":
            data = {"name": f"Agent {r}", "role": "Recherche", "state": "active",
                    "maxConcurrentMissions": 2, "systemPrompt": f"enc:1:{r:032x}",
                    "memory": f"enc:1:{i:032x}", "createdAt": stamp}
        elif is_mission:
            data = {"nextRunAt": stamp, "updatedAt": stamp, "iteration": i // records,
                    "state": "paused" if i % 10 == 0 else "active"}
        else:
            data = {"state": "paused" if i % 7 == 0 else "active",
                    "memory": f"enc:1:{i:032x}", "updatedAt": stamp}
        user = f"user-{r % users}"
        meta: dict[str, object] = {}
        for key in data or ():
            meta[key] = stamp if i % 4 < 2 else {
                "at": stamp, "actor": {"kind": "user", "principalId": user}, "origin": "user"}
        out.append(JournalRow(
            xid=str(1000 + i // 2000), change_id=str(uuid.UUID(int=i)), missing=False,
            user_id=user, table_name="aiMissions" if is_mission else "agents",
            record_id=f"mission-{r}" if is_mission else f"agent-{r}", op=op,
            data=None if data is None else json.dumps(data), field_meta=json.dumps(meta),
            created_at=created, state=None, created_at_text=None,
        ))
    return out


def fold_once(rows: list[JournalRow], batch: int) -> tuple[float, int, list[bytes]]:
    """One window: CPU seconds, rows folded, and each record's encoded state (to compare).
    The cyclic collector is paused as a catch-up pauses it (its caller, the projector,
    holds a CollectorPause across the pass's windows)."""
    gc.collect()
    pause = CollectorPause()
    started = time.process_time()  # CPU time: less skewed than wall time on a shared machine
    pause.hold()
    try:
        window = Window(max_bytes=1_000_000)
        for lo in range(0, len(rows), batch):
            window.add(rows[lo:lo + batch])
        encoded: list[bytes] = []
        for (kind, _user, record_id), (_before, state) in window.folds.items():
            encoded.append(encode_state(state))
            record = materialize(record_id, state)
            if state.last_applied_us is not None:
                from_us(state.last_applied_us)
            if kind == "mission" and record is not None:
                due_instant(record)
    finally:
        pause.release()
    elapsed = time.process_time() - started
    return elapsed, window.result.rows, encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile one run instead")
    args = parser.parse_args()
    rows = build_rows(args.rows, args.records)
    if args.profile:
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            fold_once(rows, args.batch)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    times = []
    digest = None
    for _ in range(args.runs):
        elapsed, folded, encoded = fold_once(rows, args.batch)
        times.append(elapsed / folded * 1e6)
        digest = hashlib.sha256(b"".join(encoded)).hexdigest()[:16]
    print(f"{args.rows:,} rows over {args.records:,} records, {args.runs} runs: "
          f"median {statistics.median(times):.2f} µs/row "
          f"(min {min(times):.2f}, max {max(times):.2f}); states digest {digest}")


if __name__ == "__main__":
    main()
