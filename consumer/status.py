"""`consumer status`: where the projection stands, read from the database alone."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from . import locks
from .db import connect
from .errors import ConfigError
from .sql import load


def collect(dsn: str) -> dict[str, Any]:
    with connect(dsn, role="status") as conn:
        cur = conn.execute(load("status/summary"))
        row = cur.fetchone()
        if row is None:
            raise ConfigError("mana_ai.checkpoint has no projection row: run `consumer migrate`")
        names = [d.name for d in cur.description or []]
        status = dict(zip(names, row, strict=True))
        status.update(_leadership(conn))
        cur = conn.execute(load("status/runs"))
        runs = cur.fetchone()
        names = [d.name for d in cur.description or []]
        status["runs"] = dict(zip(names, runs, strict=True)) if runs else {}
        status["old_rule_states"] = old_rule_states(conn)
    return status


def _leadership(conn: psycopg.Connection) -> dict[str, Any]:
    """The role of each consumer session: who leads (holds the leader lock), how many wait."""

    cur = conn.execute(load("status/leader"), {"key": locks.LEADER})
    row = cur.fetchone()
    names = [d.name for d in cur.description or []]
    found = dict(zip(names, row or (), strict=False))
    pid = found.get("leader_pid")
    found["leader"] = (
        f"pid {pid} from {found.get('leader_client')}, epoch {found.get('leader_epoch')}"
        if pid is not None
        else "none (no consumer holds the leader lock)"
    )
    return found


def old_rule_states(conn: psycopg.Connection) -> int:
    """How many clock states were written under the old merge rule and wait for a replay."""
    row = conn.execute(load("snapshots/merge_rule_pending")).fetchone()
    return 0 if row is None else int(row[0])


def replay_advice(states: int) -> str | None:
    if not states:
        return None
    return (
        f"note: {states:,} snapshot states were projected under the old merge rule (a first "
        "row's unstamped fields kept its created_at); run `consumer replay` to correct them"
    )


def print_status(dsn: str, *, as_json: bool = False) -> int:
    status = collect(dsn)
    if as_json:
        print(json.dumps(status, default=str))
        return 0
    labels = {
        "checkpoint": "checkpoint (applied below xid)",
        "watermark": "watermark (oldest open xid)",
        "lag_rows": "rows at or past the checkpoint",
        "oldest_unapplied_age_seconds": "age of the oldest of them (s)",
        "journal_rows": "journal size",
        "quarantined": "quarantined rows",
        "missions": "mission snapshots",
        "agents": "agent snapshots",
        "bootstrapped": "bootstrap done",
        "checkpoint_updated_at": "checkpoint last moved",
        "leader": "leader (applies and decides)",
        "leader_since": "leader session started",
        "standbys_waiting": "standbys waiting for the lock",
    }
    runs = status.get("runs") or {}
    run_labels = {
        "by_state": "runs by state",
        "oldest_running_seconds": "oldest running run (s)",
        "expired_leases": "running with an expired lease",
        "failed_last_hour": "runs failed in the last hour",
    }
    width = max(len(v) for v in (*labels.values(), *run_labels.values()))
    for key, label in labels.items():
        print(f"{label:<{width}}  {status.get(key)}")
    for key, label in run_labels.items():
        print(f"{label:<{width}}  {runs.get(key)}")
    if advice := replay_advice(status["old_rule_states"]):
        print(advice)
    return 0
