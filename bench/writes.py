"""What mana-sync writes, as the benchmarks write it: a realistic new mission's payload
(latency), mana-sync's transaction as a pgbench script (latency, cost), one fixed row for
pgbench (trigger, cost), and a LISTEN connection that drains the doorbell the way the
consumer's listener would.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import psycopg


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mission_payload(i: int, user: str) -> tuple[str, str]:
    """A realistic new mission: ~300 bytes of data, object-shaped field_meta."""
    now = datetime.now(UTC)
    data = {
        "title": f"Weekly competitor scan #{i}",
        "objective": "Summarise new competitor announcements; flag pricing changes.",
        "state": "active",
        "agentId": f"agent-{i % 20:04d}",
        "cadence": {"kind": "interval", "everyMinutes": 60},
        "nextRunAt": _iso(now + timedelta(hours=1)),
        "createdAt": _iso(now),
        "updatedAt": _iso(now),
    }
    stamp = _iso(now)
    meta = {
        k: {"at": stamp, "actor": {"kind": "user", "principalId": user}, "origin": "user"}
        for k in data
    }
    return json.dumps(data, separators=(",", ":")), json.dumps(meta, separators=(",", ":"))


# mana-sync's transaction for pgbench: BEGIN; set_config(user); a one-row INSERT; COMMIT.
# :r (the record's number) and :u (the user's) are drawn per transaction.
_PGBENCH_TXN = """\\set r random(1, {records})
\\set u random({users})
BEGIN;
SELECT set_config('app.current_user_id', 'user-' || :u, true);
INSERT INTO public.sync_changes
    (app_id, table_name, record_id, user_id, op, data, field_meta, client_id)
VALUES ('{app}', '{table}', '{prefix}' || :r, 'user-' || :u, '{op}',
        '{data}'::jsonb, '{meta}'::jsonb, {client});
COMMIT;
"""


def pgbench_script(*, app: str, table: str, records: int, users: str, prefix: str, op: str,
                   data: str, meta: str, client: str) -> str:
    """A pgbench script of one mana-sync transaction. `users`: "low, high" of the user
    number; `client`: the SQL expression stored as client_id."""
    return _PGBENCH_TXN.format(app=app, table=table, records=records, users=users,
                               prefix=prefix, op=op, data=data, meta=meta, client=client)


# One row for pgbench writers: a mission's update, ~300 bytes of data and string stamps.
ROW_DATA = json.dumps({
    "title": "Weekly competitor scan", "state": "active", "agentId": "agent-0001",
    "objective": "Summarise new competitor announcements; flag pricing changes.",
    "cadence": {"kind": "interval", "everyMinutes": 60},
    "nextRunAt": "2025-06-01T10:00:00.000Z", "updatedAt": "2025-06-01T09:00:00.000Z",
}, separators=(",", ":"))
ROW_META = json.dumps({k: "2025-06-01T09:00:00.000Z" for k in json.loads(ROW_DATA)},
                   separators=(",", ":"))


class Listener(threading.Thread):
    """A live LISTEN connection draining the doorbell, as the consumer would."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.rings = 0
        self.ready = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            from consumer.listener import CHANNEL

            conn.execute(f"LISTEN {CHANNEL}")  # the channel the consumer listens on
            self.ready.set()
            while not self.stop.is_set():
                for _ in conn.notifies(timeout=0.2):
                    self.rings += 1
