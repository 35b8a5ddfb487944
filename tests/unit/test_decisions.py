"""The gate table (docs/architecture.md#decisions): every branch, the order of the gates, is_due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.decisions import (
    AgentLimits,
    Decision,
    Hold,
    Verdict,
    agent_gate_inputs,
    agent_name,
    agent_present,
    decide,
    due_instant,
    hold_at_attempt,
    is_due,
    is_legacy,
)
from tests import upstream_oracle as oracle

MISSION = {"id": "m1", "state": "active", "agentId": "a1"}


def agent(**fields: Any) -> dict[str, Any]:
    return {"id": "a1", "name": "Scout", "state": "active", **fields}


# --- single gates ---------------------------------------------------------------------------


@pytest.mark.parametrize("agent_id", [None, ""])
def test_legacy_mission_runs_under_default_identity(agent_id: str | None) -> None:
    v = decide({**MISSION, "agentId": agent_id}, None, 0, 0)
    assert v == Verdict(Decision.RAN, "legacy mission: default identity")


def test_mission_without_agent_id_key_is_legacy() -> None:
    assert decide({"id": "m1"}, None, 0, 0).decision is Decision.RAN


def test_legacy_skips_every_agent_gate() -> None:
    # Even a record that would fail every gate is ignored for a legacy mission.
    bad = agent(state="archived", maxConcurrentMissions=0, maxTokensPerDay=0)
    assert decide({"id": "m1"}, bad, 99, 10**9).decision is Decision.RAN


def test_agent_missing() -> None:
    v = decide(MISSION, None, 0, 0)
    assert v.decision is Decision.SKIPPED_AGENT_MISSING
    assert "a1" in v.reason
    assert not v.silent


@pytest.mark.parametrize("deleted_at", ["2026-01-01T00:00:00Z", "", False, 0, [], {}])
def test_agent_with_deleted_at_counts_as_missing(deleted_at: Any) -> None:
    # upstream loads only agents whose record->>'deletedAt' IS NULL
    v = decide(MISSION, agent(deletedAt=deleted_at), 0, 0)
    assert v.decision is Decision.SKIPPED_AGENT_MISSING
    assert decide(MISSION, agent(deletedAt=None), 0, 0).decision is Decision.RAN


def test_archived_is_silent() -> None:
    v = decide(MISSION, agent(state="archived"), 0, 0)
    assert v == Verdict(Decision.SKIPPED_ARCHIVED, "agent archived", silent=True)


def test_paused() -> None:
    v = decide(MISSION, agent(state="paused"), 0, 0)
    assert v == Verdict(Decision.SKIPPED_PAUSED, "agent paused")


def test_concurrency_full() -> None:
    v = decide(MISSION, agent(maxConcurrentMissions=2), 2, 0)
    assert v == Verdict(Decision.SKIPPED_CONCURRENCY, "2 of 2 concurrent runs in flight")


def test_concurrency_free_slot_runs() -> None:
    assert decide(MISSION, agent(maxConcurrentMissions=2), 1, 0).decision is Decision.RAN


@pytest.mark.parametrize("limit", [0, -1])
def test_concurrency_zero_or_negative_taken_literally(limit: int) -> None:
    assert decide(MISSION, agent(maxConcurrentMissions=limit), 0, 0).decision is (
        Decision.SKIPPED_CONCURRENCY
    )


def test_concurrency_missing_means_one_at_a_time() -> None:
    # upstream: Number(maxConcurrentMissions ?? 1)
    for a in (agent(), agent(maxConcurrentMissions=None)):
        assert decide(MISSION, a, 0, 0).decision is Decision.RAN
        v = decide(MISSION, a, 1, 0)
        assert v == Verdict(Decision.SKIPPED_CONCURRENCY, "1 of 1 concurrent runs in flight")


@pytest.mark.parametrize("limit", ["x", {}, [1, 2], float("nan"), float("inf")])
def test_concurrency_not_a_number_never_blocks(limit: Any) -> None:
    # Number(...) is NaN (or Infinity): `running >= limit` is never true upstream.
    assert decide(MISSION, agent(maxConcurrentMissions=limit), 50, 0).decision is Decision.RAN


@pytest.mark.parametrize(("limit", "blocks_at"), [("2", 2), (" 3 ", 3), (True, 1), ([2], 2),
                                                  ("0x2", 2), (False, 0), ("", 0), ([], 0)])
def test_concurrency_converted_as_javascript_number(limit: Any, blocks_at: int) -> None:
    if blocks_at:
        assert decide(MISSION, agent(maxConcurrentMissions=limit), blocks_at - 1, 0).decision is (
            Decision.RAN
        )
    assert decide(MISSION, agent(maxConcurrentMissions=limit), blocks_at, 0).decision is (
        Decision.SKIPPED_CONCURRENCY
    )


def test_concurrency_fractional_limit_rounds_up() -> None:
    # in_flight >= 1.5 is the same as in_flight >= 2 for integer counts.
    assert decide(MISSION, agent(maxConcurrentMissions=1.5), 1, 0).decision is Decision.RAN
    assert decide(MISSION, agent(maxConcurrentMissions=1.5), 2, 0).decision is (
        Decision.SKIPPED_CONCURRENCY
    )


def test_budget_exceeded() -> None:
    v = decide(MISSION, agent(maxTokensPerDay=1000), 0, 1200)
    assert v == Verdict(Decision.SKIPPED_BUDGET, "used 1200 of 1000 tokens in 24h")


def test_budget_reached_exactly_skips() -> None:
    assert decide(MISSION, agent(maxTokensPerDay=1000), 0, 1000).decision is (
        Decision.SKIPPED_BUDGET
    )


def test_budget_below_runs() -> None:
    assert decide(MISSION, agent(maxTokensPerDay=1000), 0, 999).decision is Decision.RAN


def test_budget_zero_means_nothing_may_be_spent() -> None:
    v = decide(MISSION, agent(maxTokensPerDay=0), 0, 0)
    assert v == Verdict(Decision.SKIPPED_BUDGET, "used 0 of 0 tokens in 24h")


@pytest.mark.parametrize("limit", [None, -1, -0.5, "100", True, [5], {}])
def test_budget_counts_only_a_number_at_least_zero(limit: Any) -> None:
    # upstream: typeof === 'number' && >= 0; anything else is no budget
    assert decide(MISSION, agent(maxTokensPerDay=limit), 0, 10**12).decision is Decision.RAN


def test_ran() -> None:
    v = decide(MISSION, agent(maxConcurrentMissions=3, maxTokensPerDay=10), 2, 9)
    assert v.decision is Decision.RAN
    assert not v.silent


def test_unknown_state_runs() -> None:
    # Only 'archived' and 'paused' stop a run; any other state (or none) is not a gate.
    assert decide(MISSION, agent(state=None), 0, 0).decision is Decision.RAN
    assert decide(MISSION, {"id": "a1"}, 0, 0).decision is Decision.RAN


# --- order between gates --------------------------------------------------------------------


def test_archived_beats_paused_and_budget() -> None:
    # An archived agent can't be paused at the same time, but a broken record must still
    # resolve by order: archived first.
    a = agent(state="archived", maxConcurrentMissions=0, maxTokensPerDay=0)
    assert decide(MISSION, a, 5, 5000).decision is Decision.SKIPPED_ARCHIVED


def test_paused_beats_concurrency() -> None:
    a = agent(state="paused", maxConcurrentMissions=1)
    assert decide(MISSION, a, 1, 0).decision is Decision.SKIPPED_PAUSED


def test_concurrency_beats_budget() -> None:
    a = agent(maxConcurrentMissions=1, maxTokensPerDay=0)
    assert decide(MISSION, a, 1, 1).decision is Decision.SKIPPED_CONCURRENCY


def test_missing_agent_decided_before_anything_that_needs_the_record() -> None:
    assert decide(MISSION, None, 99, 10**9).decision is Decision.SKIPPED_AGENT_MISSING


# --- property: first matching gate in the documented order ---------------------------------

limits = st.one_of(
    st.none(),
    st.integers(min_value=-2, max_value=6),
    st.floats(min_value=-2, max_value=6, allow_nan=False),
    st.sampled_from(["3", " 2", "0x3", "x", "", True, False, [], [2], [1, 2], {}, float("nan")]),
)


@st.composite
def agents(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return None
    record: dict[str, Any] = {"id": "a1"}
    state = draw(st.sampled_from(["active", "paused", "archived", None, "other"]))
    if state is not None:
        record["state"] = state
    for key in ("maxConcurrentMissions", "maxTokensPerDay"):
        if draw(st.booleans()):
            record[key] = draw(limits)
    if draw(st.integers(0, 9)) == 0:
        record["deletedAt"] = draw(st.sampled_from(["2026-01-01T00:00:00Z", "", False, None]))
    return record


@given(
    agent_id=st.sampled_from([None, "", "a1", "__absent__"]),
    a=agents(),
    in_flight=st.integers(0, 8),
    used=st.integers(0, 8),
)
def test_decision_is_first_matching_gate(
    agent_id: str | None, a: dict[str, Any] | None, in_flight: int, used: int
) -> None:
    mission: dict[str, Any] = {"id": "m1", "state": "active"}
    if agent_id != "__absent__":
        mission["agentId"] = agent_id

    # The gate order, over the agent as upstream reads it (tests/upstream_oracle.py),
    # written independently of decide().
    legacy = agent_id in (None, "", "__absent__")
    found = oracle.load_active_agents([] if a is None else [a]).get("a1")
    missing = found is None
    gates = [
        (legacy, Decision.RAN),
        (missing, Decision.SKIPPED_AGENT_MISSING),
        (not missing and found.state == "archived", Decision.SKIPPED_ARCHIVED),  # type: ignore[union-attr]
        (not missing and found.state == "paused", Decision.SKIPPED_PAUSED),  # type: ignore[union-attr]
        (not missing and in_flight >= found.max_concurrent, Decision.SKIPPED_CONCURRENCY),  # type: ignore[union-attr]
        (
            not missing
            and found.max_tokens_per_day is not None  # type: ignore[union-attr]
            and used >= found.max_tokens_per_day,  # type: ignore[union-attr]
            Decision.SKIPPED_BUDGET,
        ),
        (True, Decision.RAN),
    ]
    expected = next(decision for matched, decision in gates if matched)

    verdict = decide(mission, a, in_flight, used)
    assert verdict.decision is expected
    assert verdict.silent == (expected is Decision.SKIPPED_ARCHIVED)
    assert verdict.reason


# --- at the start of an attempt -------------------------------------------------------------

DUE_TEXT = "2026-03-01T08:00:00.000Z"
DUE_AT = datetime(2026, 3, 1, 8, tzinfo=UTC)
DUE_MISSION = {**MISSION, "nextRunAt": DUE_TEXT}


def hold(mission: dict[str, Any] | None, record: dict[str, Any] | None = None,
         used: int = 0, agent_id: str | None = "a1", due_at: datetime = DUE_AT) -> Hold | None:
    return hold_at_attempt(mission, record, agent_id, due_at, used)


def test_an_attempt_whose_gates_stay_open_runs() -> None:
    assert hold(DUE_MISSION, agent(maxTokensPerDay=100), 99) is None


@pytest.mark.parametrize(("record", "used", "gate"), [
    (None, 0, "skipped-agent-missing"),
    (agent(deletedAt="2026-01-01T00:00:00Z"), 0, "skipped-agent-missing"),
    (agent(state="archived"), 0, "skipped-archived"),
    (agent(state="paused"), 0, "skipped-paused"),
    (agent(maxTokensPerDay=100), 100, "skipped-budget"),
    (agent(maxTokensPerDay=0), 0, "skipped-budget"),
    (agent(maxConcurrentMissions=0), 0, "skipped-concurrency"),
], ids=["missing", "deleted", "archived", "paused", "budget", "budget-0", "concurrency-0"])
def test_an_attempt_holds_when_a_gate_closed_since_the_claim(
    record: dict[str, Any] | None, used: int, gate: str
) -> None:
    found = hold(DUE_MISSION, record, used)
    assert found is not None and found.gate == gate and found.reason


def test_the_attempt_does_not_count_itself_against_the_concurrency_limit() -> None:
    # Its occurrence already holds the one slot: counting it again would stop every run.
    assert hold(DUE_MISSION, agent(maxConcurrentMissions=1)) is None
    assert hold(DUE_MISSION, agent()) is None  # no limit given: one at a time


@pytest.mark.parametrize("spelling", ["2026-03-01T08:00:00Z", "2026-03-01T09:00:00+01:00",
                                      "2026-03-01 08:00"])
def test_the_same_instant_spelt_otherwise_has_not_moved(spelling: str) -> None:
    assert hold({**MISSION, "nextRunAt": spelling}, agent()) is None


def test_the_claims_instant_read_in_a_zone_with_daylight_saving_has_not_moved() -> None:
    # psycopg reads timestamptz in the session's time zone. In the hour a zone falls back,
    # Python never finds such a datetime equal to one in another zone; had the check
    # compared datetimes, every attempt would be released and claimed again, forever.
    instant = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    berlin = instant.astimezone(ZoneInfo("Europe/Berlin"))
    assert berlin != instant  # what the check must not rely on
    mission = {**MISSION, "nextRunAt": "2026-10-25T00:30:00Z"}
    assert hold(mission, agent(), due_at=berlin) is None


@pytest.mark.parametrize("next_run", ["2026-03-01T08:00:01Z", "2026-03-02", "soon", None])
def test_a_mission_moved_to_another_instant_holds(next_run: str | None) -> None:
    assert hold({**MISSION, "nextRunAt": next_run}, agent()) == Hold(
        "moved", f"nextRunAt is now {next_run if next_run else 'null'}")


@pytest.mark.parametrize(("mission", "gate", "reason"), [
    (None, "mission-gone", "the mission's snapshot is gone"),
    ({**DUE_MISSION, "state": "paused"}, "mission-inactive", "the mission is paused"),
    ({**DUE_MISSION, "deletedAt": ""}, "mission-inactive", "the mission is deleted"),
], ids=["gone", "paused", "deleted"])
def test_a_mission_paused_deleted_or_gone_holds(
    mission: dict[str, Any] | None, gate: str, reason: str
) -> None:
    # Released, not failed: resumed at the same nextRunAt, it is due and runs again.
    assert hold(mission, agent()) == Hold(gate, reason)


@pytest.mark.parametrize(("agent_id", "claimed_for"), [
    ("a2", "a1"), (None, "a1"), ("a1", None),
], ids=["another-agent", "now-legacy", "was-legacy"])
def test_a_mission_given_to_another_agent_holds(
    agent_id: str | None, claimed_for: str | None
) -> None:
    # The claim's agent may be active while the mission's new one is paused: decided afresh.
    found = hold({**DUE_MISSION, "agentId": agent_id}, agent(), agent_id=claimed_for)
    assert found is not None and found.gate == "reassigned"


def test_a_legacy_mission_holds_only_when_it_changed() -> None:
    legacy = {"id": "m1", "state": "active", "nextRunAt": DUE_TEXT}
    assert hold(legacy, None, 10**9, agent_id=None) is None
    assert hold({**legacy, "nextRunAt": "2027-01-01"}, None, agent_id=None) is not None


@given(
    agent_id=st.sampled_from([None, "", "a1"]),
    a=agents(),
    used=st.integers(0, 8),
)
def test_an_attempt_holds_exactly_when_the_scheduler_would_not_run_it_now(
    agent_id: str | None, a: dict[str, Any] | None, used: int
) -> None:
    # With the mission as it was claimed, the attempt runs iff decide() says ran with
    # nothing else in flight: the check adds no gate of its own and drops none but the
    # slot the occurrence holds.
    mission = {"id": "m1", "state": "active", "agentId": agent_id, "nextRunAt": DUE_TEXT}
    claimed_for = None if agent_id in (None, "") else agent_id
    verdict = decide(mission, a, 0, used)
    found = hold(mission, a, used, agent_id=claimed_for)
    if verdict.decision is Decision.RAN:
        assert found is None
    else:
        assert found == Hold(verdict.decision.value, verdict.reason)


# --- helpers ----------------------------------------------------------------------------------


def test_agent_gate_inputs() -> None:
    assert agent_gate_inputs({}) == AgentLimits(1, None)
    assert agent_gate_inputs({"maxConcurrentMissions": 2, "maxTokensPerDay": 0}) == AgentLimits(
        2, 0
    )
    assert agent_gate_inputs({"maxConcurrentMissions": 2.0, "maxTokensPerDay": "x"}) == (
        AgentLimits(2, None)
    )
    assert agent_gate_inputs({"maxTokensPerDay": -1}) == AgentLimits(1, None)
    big = 2**53 + 1  # exact, not a double (a documented difference)
    assert agent_gate_inputs({"maxTokensPerDay": big}).max_tokens_per_day == big


NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def test_is_due() -> None:
    due = {"state": "active", "nextRunAt": "2026-11-26T08:00:00Z"}
    assert is_due(due, NOW)
    assert is_due(due, NOW + timedelta(seconds=1))
    assert not is_due(due, NOW - timedelta(milliseconds=1))
    # Offsets compare as instants, not as strings.
    assert is_due({"state": "active", "nextRunAt": "2026-11-26T09:59:59+02:00"}, NOW)
    assert not is_due({"state": "active", "nextRunAt": "2026-11-26T08:00:01+00:00"}, NOW)
    other_zone = NOW.astimezone(timezone(timedelta(hours=-5)))
    assert is_due(due, other_zone)


@pytest.mark.parametrize(
    "mission",
    [
        {"state": "paused", "nextRunAt": "2026-01-01T00:00:00Z"},
        {"state": "active", "nextRunAt": "2026-01-01T00:00:00Z", "deletedAt": "2026-01-02"},
        {"state": "active"},
        {"state": "active", "nextRunAt": None},
        {"state": "active", "nextRunAt": "soon"},
        {"nextRunAt": "2026-01-01T00:00:00Z"},
    ],
)
def test_not_due(mission: dict[str, Any]) -> None:
    assert not is_due(mission, NOW)


def test_is_due_rejects_naive_now() -> None:
    with pytest.raises(ValueError):
        is_due({"state": "active", "nextRunAt": "2026-01-01T00:00:00Z"}, datetime(2026, 1, 2))


@pytest.mark.parametrize("deleted_at", ["", False, 0, {}, [], "2026-01-02T00:00:00Z"])
def test_any_deleted_at_that_is_not_null_takes_the_mission_out(deleted_at: Any) -> None:
    """Upstream's rule is SQL's `record->>'deletedAt' IS NULL`: "" and false count too."""
    mission = {"state": "active", "nextRunAt": "2026-01-01T00:00:00Z", "deletedAt": deleted_at}
    assert due_instant(mission) is None
    assert not is_due(mission, NOW)


def test_a_null_or_absent_deleted_at_leaves_the_mission_due() -> None:
    assert is_due({"state": "active", "nextRunAt": "2026-01-01T00:00:00Z", "deletedAt": None}, NOW)
    assert is_due({"state": "active", "nextRunAt": "2026-01-01T00:00:00Z"}, NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T10:00:00+02:00", NOW),
        ("2026-11-26T22:00+14:00", NOW),
        ("2026-11-25T22:00:00-10:00", NOW),
        ("2026-11-26", NOW - timedelta(hours=8)),
        ("2026-11-26x08:00:00Z", None),  # Python's parser takes any separator; not due
        ("20261126T080000Z", None),
        ("9999-12-31T23:00:00-02:00", None),  # in the year 10000 once in UTC
    ],
)
def test_due_instant_reads_offsets_as_instants(text: str, expected: datetime | None) -> None:
    assert due_instant({"state": "active", "nextRunAt": text}) == expected


# --- agent readers: upstream's toServerAgent ----------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 3),
        st.floats(-3, 3, allow_nan=False),
        st.sampled_from(["", " 2 ", "2", "x", "0x1f", "1e1", "-Infinity", ".5", "enc:1:x"]),
    ),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.just("k"), inner, max_size=1),
    max_leaves=3,
)


@given(
    record=st.fixed_dictionaries(
        {"id": st.just("a1")},
        optional={
            k: json_values
            for k in ("name", "state", "maxConcurrentMissions", "maxTokensPerDay", "deletedAt")
        },
    )
)
def test_agent_readers_match_upstream(record: dict[str, Any]) -> None:
    expected = oracle.to_server_agent(record)
    limits = agent_gate_inputs(record)
    same = limits.max_concurrent == expected.max_concurrent or (
        limits.max_concurrent != limits.max_concurrent
        and expected.max_concurrent != expected.max_concurrent  # both NaN
    )
    assert same, (limits.max_concurrent, expected.max_concurrent)
    assert limits.max_tokens_per_day == expected.max_tokens_per_day
    assert agent_name(record) == expected.name
    found = oracle.load_active_agents([record])
    assert agent_present(record) == ("a1" in found)


def test_agent_name_default_and_javascript_string() -> None:
    assert agent_name({}) == "Unnamed"
    assert agent_name({"name": None}) == "Unnamed"
    assert agent_name({"name": ""}) == ""
    assert agent_name({"name": 5}) == "5"
    assert agent_name({"name": 2.5}) == "2.5"
    assert agent_name({"name": True}) == "true"
    assert agent_name({"name": ["a", None, 1]}) == "a,,1"
    assert agent_name({"name": {"x": 1}}) == "[object Object]"


@pytest.mark.parametrize("agent_id", [5, True, ["a1"], {"id": "a1"}])
def test_mission_agent_id_counts_only_as_a_string(agent_id: Any) -> None:
    # upstream: agentId: typeof record.agentId === 'string' ? record.agentId : undefined
    assert is_legacy({"agentId": agent_id})
    v = decide({**MISSION, "agentId": agent_id}, None, 0, 0)
    assert v.decision is Decision.RAN
