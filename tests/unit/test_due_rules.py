"""The DueSelector's pure rules (pick, key_agents, agent_id_of) on their own; the selection
against a real server is in tests/test_due_selector.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.decisions import agent_id_of
from consumer.due import Due, Selection, key_agents, pick
from consumer.ledger import Occurrence
from consumer.snapshots import AgentRow, DueMission
from tests.due_records import NOW, expected, mission_record, record_key


@given(
    records=st.dictionaries(record_key, mission_record, max_size=30),
    index=st.lists(st.integers(-7200, 7200), min_size=30, max_size=30),
)
def test_pick_keeps_what_the_record_says_is_due_oldest_first(
    records: dict[tuple[str, str], dict[str, Any]], index: list[int]
) -> None:
    """Whatever instant the index row carries (a hand edit), the record decides."""
    rows = [
        DueMission(u, m, r["nextRunAt"] if isinstance(r["nextRunAt"], str) else None, r,
                   NOW + timedelta(seconds=shift))
        for ((u, m), r), shift in zip(records.items(), index, strict=False)
    ]
    assert pick(rows, NOW) == expected(records, NOW)
    assert pick(reversed(rows), NOW) == pick(rows, NOW)


def test_key_agents_finds_agents_by_their_record_id() -> None:
    rows = [
        AgentRow("u1", "k1", {"id": "real"}),
        AgentRow("u1", "k2", {"id": "real", "name": "greatest key"}),
        AgentRow("u1", "k3", {}),  # no id (the projection always writes one): read as null
        AgentRow("u2", "k1", {"id": 7}),
    ]
    assert key_agents(rows) == {
        ("u1", "real"): {"id": "real", "name": "greatest key"},
        ("u1", "null"): {},
        ("u2", "7"): {"id": 7},
    }


@pytest.mark.parametrize(
    ("fields", "agent_id"),
    [
        ({"agentId": "a1"}, "a1"),
        ({}, None),
        ({"agentId": ""}, None),
        ({"agentId": None}, None),
        ({"agentId": 7}, None),
    ],
)
def test_agent_id_of(fields: dict[str, Any], agent_id: str | None) -> None:
    assert agent_id_of({"state": "active", **fields}) == agent_id


def test_agent_pairs_are_the_due_missions_with_a_found_agent() -> None:
    def due(user_id: str, mission_id: str, **fields: Any) -> Due:
        return Due(Occurrence(user_id, mission_id, "2026-05-01T11:00:00Z", NOW), fields)

    selection = Selection(
        due=[due("u1", "m1", agentId="a1"), due("u1", "m2", agentId="gone"), due("u1", "m3"),
             due("u2", "m1", agentId="a1")],
        candidates=4,
        next_due=None,
        agents={("u1", "a1"): {"id": "a1"}, ("u3", "gone"): {"id": "gone"}},
    )
    assert selection.agent_pairs() == {("u1", "a1")}
