"""Helpers for tests that write mana-sync traffic and compare snapshots with a fold."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Collection
from typing import Any

import psycopg

from consumer.merge import agent_visible, fold, materialize
from consumer.model import RawChange
from consumer.sql import load
from consumer.validate import Rejected, validate

INSERT = """INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id, created_at)
    VALUES (%s, 'ai', %s, %s, %s, %s, %s::jsonb, %s::jsonb, 'test-client', coalesce(%s, now()))"""


def write(
    conn: psycopg.Connection,
    table: str,
    record_id: str,
    data: dict[str, Any] | None,
    *,
    user: str = "u1",
    op: str = "update",
    field_meta: dict[str, Any] | None = None,
    created_at: Any = None,
    change_id: str | None = None,
) -> str:
    change_id = change_id or str(uuid.uuid4())
    conn.execute(
        INSERT,
        (
            change_id,
            table,
            record_id,
            user,
            op,
            None if data is None else json.dumps(data),
            json.dumps(field_meta or {}),
            created_at,
        ),
    )
    return change_id


def mission(conn: psycopg.Connection, mission_id: str, **fields: Any) -> str:
    user = fields.pop("user", "u1")
    return write(conn, "aiMissions", mission_id, fields, user=user)


def agent(conn: psycopg.Connection, agent_id: str, **fields: Any) -> str:
    user = fields.pop("user", "u1")
    return write(conn, "agents", agent_id, fields, user=user)


def expected_snapshots(
    dsn: str, exclude: Collection[str] = ()
) -> dict[str, dict[tuple[str, str], dict]]:
    """The one-shot fold of the whole log, as the snapshot tables should hold it.
    `exclude`: change ids a test expects to be quarantined although they validate (an
    integer past 64 bits, which the in-memory fold would keep)."""
    groups: dict[tuple[str, str, str], list] = defaultdict(list)
    with psycopg.connect(dsn) as conn:
        # The consumer's own read of the log (it keeps a created_at of 'infinity' from
        # failing the driver); the fold below is independent of the stream.
        rows = conn.execute(load("journal/log_read")).fetchall()
    for row in rows:
        if row[0] in exclude:
            continue
        checked = validate(RawChange(*row), 1_000_000)
        if not isinstance(checked, Rejected):
            groups[(checked.table_name, checked.user_id, checked.record_id)].append(checked)
    out: dict[str, dict[tuple[str, str], dict]] = {"missions": {}, "agents": {}}
    for (table, user, record_id), changes in groups.items():
        state, _ = fold(changes)
        record = materialize(record_id, state)
        if table == "aiMissions" and record is not None:
            out["missions"][(user, record_id)] = record
        elif table == "agents" and agent_visible(record):
            out["agents"][(user, record_id)] = record  # type: ignore[assignment]
    return out


def actual_snapshots(dsn: str) -> dict[str, dict[tuple[str, str], dict]]:
    with psycopg.connect(dsn) as conn:
        missions = conn.execute(
            "SELECT user_id, mission_id, record FROM mana_ai.mission_snapshots"
        ).fetchall()
        agents = conn.execute(
            "SELECT user_id, agent_id, record FROM mana_ai.agent_snapshots"
        ).fetchall()
    return {
        "missions": {(u, r): rec for u, r, rec in missions},
        "agents": {(u, r): rec for u, r, rec in agents},
    }
