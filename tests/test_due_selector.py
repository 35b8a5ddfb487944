"""The DueSelector against a real server: through the projection, with a hand-edited index
and a ledgered occurrence, and as a property: it equals the rule applied to every snapshot
(its pure rules on their own: tests/unit/test_due_rules.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from consumer import eventloop, ledger, snapshots
from consumer.decisions import due_instant
from consumer.due import DueSelector, Selection
from consumer.ledger import Claim, Occurrence
from consumer.projection import Projector
from tests.due_records import MINUS10, NOW, PLUS14, expected, mission_record, record_key
from tests.logtools import agent, mission


async def _select(dsn: str, now: datetime) -> Selection:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            return await DueSelector().select(conn, now)


@pytest.mark.anyio
async def test_selection_through_the_projection(db: str) -> None:
    now = datetime.now(UTC)

    def spelled(seconds: float, zone: timezone = UTC) -> str:
        return (now + timedelta(seconds=seconds)).astimezone(zone).isoformat()

    with psycopg.connect(db, autocommit=True) as log:
        mission(log, "plus14-past", state="active", agentId="a1", nextRunAt=spelled(-60, PLUS14))
        mission(log, "z-past", state="active", agentId="twin", nextRunAt=spelled(-120))
        mission(log, "minus10-future", state="active", nextRunAt=spelled(3600, MINUS10))
        mission(log, "soon", state="active", nextRunAt=spelled(600))
        mission(log, "edited", state="active", nextRunAt=spelled(1800))
        mission(log, "paused", state="paused", nextRunAt=spelled(-60))
        mission(log, "deleted", state="active", nextRunAt=spelled(-60), deletedAt="")
        mission(log, "claimed", state="active", nextRunAt=spelled(-30))
        mission(log, "other-user", user="u2", state="active", agentId="a9",
                nextRunAt=spelled(-10))
        agent(log, "a1", name="Ada")
        agent(log, "t1", id="twin", name="first")
        agent(log, "t2", id="twin", name="greatest key")
        agent(log, "gone", id="a1", name="deleted", deletedAt=False)
        agent(log, "a7", user="u3", name="a user with nothing due")
        agent(log, "a9", user="u2", name="Bo")
    async with await psycopg.AsyncConnection.connect(db) as work:
        projector = Projector()
        await projector.bootstrap(work)
        await projector.catch_up(work)
        # A hand edit makes the index say "due" for a mission whose record is not yet.
        await work.execute("UPDATE mana_ai.mission_due SET due_at = %s WHERE mission_id = %s",
                           (now - timedelta(minutes=5), "edited"))
        # The same instant as "claimed", spelt another way, is in the ledger already.
        at = now - timedelta(seconds=30)
        occ = Occurrence("u1", "claimed", at.astimezone(PLUS14).isoformat(), at)
        await ledger.claim_many(work, [Claim(occ, "test", None)])
        await work.commit()

    selection = await _select(db, now)
    assert [(d.occ.user_id, d.occ.mission_id) for d in selection.due] == [
        ("u1", "z-past"), ("u1", "plus14-past"), ("u2", "other-user")]
    assert [d.at for d in selection.due] == [now - timedelta(seconds=s) for s in (120, 60, 10)]
    assert selection.due[1].occ.next_run_at == spelled(-60, PLUS14)  # as written
    assert selection.candidates == 4  # the three due and the hand-edited one
    assert selection.next_due == now + timedelta(seconds=600)
    assert {k: v.get("name") for k, v in selection.agents.items()} == {
        ("u1", "a1"): "Ada", ("u1", "twin"): "greatest key", ("u2", "a9"): "Bo"}
    assert selection.agent_pairs() == {("u1", "a1"), ("u1", "twin"), ("u2", "a9")}

    later = await _select(db, now + timedelta(hours=2))
    assert [d.occ.mission_id for d in later.due] == [
        "z-past", "plus14-past", "other-user", "soon", "edited", "minus10-future"]
    assert later.next_due is None


@pytest.mark.anyio
async def test_an_empty_selection_reads_no_agents(db: str) -> None:
    selection = await _select(db, NOW)
    assert selection == Selection([], 0, None, {})


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
@given(
    records=st.dictionaries(record_key, mission_record, max_size=25),
    now=st.integers(-7200, 7200).map(lambda s: NOW + timedelta(seconds=s)),
)
def test_selection_equals_the_rule_on_every_snapshot(
    db: str, records: dict[tuple[str, str], dict[str, Any]], now: datetime
) -> None:
    """Snapshots and their index rows as the migration's backfill writes them: the selection
    is every record due at `now` (oldest first) and the next instant after `now`."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DELETE FROM mana_ai.mission_due")
        conn.execute("DELETE FROM mana_ai.mission_snapshots")
        for (user_id, mission_id), record in records.items():
            conn.execute(
                "INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record)"
                " VALUES (%s, %s, %s)", (user_id, mission_id, Jsonb(record)))
        conn.execute(
            """INSERT INTO mana_ai.mission_due (user_id, mission_id, due_at)
               SELECT user_id, mission_id, mana_ai.mission_due_at(record)
               FROM mana_ai.mission_snapshots WHERE mana_ai.mission_due_at(record) IS NOT NULL""")
    selection = eventloop.run(_select, db, now)
    assert selection.due == expected(records, now)
    later = [at for r in records.values() if (at := due_instant(r)) is not None and at > now]
    assert selection.next_due == min(later, default=None)


@pytest.mark.anyio
async def test_mission_clocks(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as log:
        mission(log, "m", state="active", nextRunAt="2026-05-01T12:00:00Z")
    async with await psycopg.AsyncConnection.connect(db) as work:
        projector = Projector()
        await projector.bootstrap(work)
        await projector.catch_up(work)
        clocks = await snapshots.mission_clocks(work, "u1", "m")
        assert isinstance(clocks, bytes) and clocks
        assert await snapshots.mission_clocks(work, "u1", "missing") is None
