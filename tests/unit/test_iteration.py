"""Planner reply parsing, the iteration, the actor and the write-back row
(docs/architecture.md#runs-and-write-back)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.instants import iso
from consumer.iteration import (
    ParseFailure,
    PlannerAnswer,
    PlanStep,
    WriteBack,
    build_actor,
    build_advance,
    build_iteration,
    build_writeback,
    parse_planner_reply,
    rationale_of,
    stamp_after,
)

GOOD = (
    '{"summary": "Plan the week", "steps": ['
    '{"summary": "Create task", "toolName": "todo.create", "params": {"title": "X"},'
    ' "rationale": "needed"},'
    '{"summary": "Notify", "toolName": "notify"}]}'
)

T0 = datetime(2026, 11, 26, 8, 29, 6, 123456, tzinfo=UTC)
T1 = T0 + timedelta(seconds=2)


# --- parsing --------------------------------------------------------------------------------


def test_parse_good() -> None:
    answer = parse_planner_reply(GOOD)
    assert answer == PlannerAnswer(
        summary="Plan the week",
        steps=[
            PlanStep("Create task", "todo.create", {"title": "X"}, "needed"),
            PlanStep("Notify", "notify", {}, ""),
        ],
    )


@pytest.mark.parametrize(
    "reply",
    [
        f"```json\n{GOOD}\n```",
        f"```JSON\n{GOOD}\n```",
        f"```\n{GOOD}\n```",
        f"Here is the plan:\n\n```json\n{GOOD}\n```\nHope that helps.",
        f"  \n{GOOD}\n  ",
        f"```json {GOOD}```",
    ],
)
def test_parse_fenced_and_padded(reply: str) -> None:
    assert parse_planner_reply(reply) == parse_planner_reply(GOOD)


def test_parse_no_steps() -> None:
    assert parse_planner_reply('{"summary": "nothing to do"}') == PlannerAnswer("nothing to do")


def test_parse_ignores_unknown_fields() -> None:
    reply = (
        '{"summary": "s", "confidence": 0.9, "steps": [{"summary": "a", "toolName": "t", "x": 1}]}'
    )
    assert parse_planner_reply(reply).steps == [PlanStep("a", "t")]


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "I cannot help with that.",
        "{not json",
        "[]",
        '"just a string"',
        "null",
        '{"steps": []}',  # summary missing
        '{"summary": 1}',
        '{"summary": "s", "steps": {}}',
        '{"summary": "s", "steps": [{"summary": "a"}]}',  # toolName missing
        '{"summary": "s", "steps": [{"toolName": "t"}]}',  # step summary missing
        '{"summary": "s", "steps": [{"summary": "a", "toolName": "t", "params": []}]}',
        '{"summary": "s", "steps": [{"summary": "a", "toolName": "t", "params": null}]}',
        f"{GOOD} trailing prose",
        "```json\n{broken\n```",
        "```json\n" + GOOD,  # unterminated fence
    ],
)
def test_parse_garbage_raises(reply: str) -> None:
    with pytest.raises(ParseFailure):
        parse_planner_reply(reply)


def test_parse_non_string_raises() -> None:
    with pytest.raises(ParseFailure):
        parse_planner_reply(None)  # type: ignore[arg-type]


def test_default_containers_are_not_shared() -> None:
    a, b = PlanStep("a", "t"), PlanStep("b", "t")
    a.params["k"] = 1
    assert b.params == {}
    assert PlannerAnswer("x").steps == []


# --- iteration ------------------------------------------------------------------------------


def test_build_iteration_shape() -> None:
    it = build_iteration(parse_planner_reply(GOOD), "it-7", T0, T1)
    assert it == {
        "id": "it-7",
        "startedAt": "2026-11-26T08:29:06.123Z",
        "finishedAt": "2026-11-26T08:29:08.123Z",
        "plan": [
            {
                "id": "it-7-0",
                "summary": "Create task",
                "intent": {"kind": "toolCall", "toolName": "todo.create", "params": {"title": "X"}},
                "status": "planned",
            },
            {
                "id": "it-7-1",
                "summary": "Notify",
                "intent": {"kind": "toolCall", "toolName": "notify", "params": {}},
                "status": "planned",
            },
        ],
        "summary": "Plan the week",
        "overallStatus": "awaiting-review",
        "source": "server",
    }
    # The iteration must serialise as JSON (it goes into a jsonb column).
    assert msgspec.json.decode(msgspec.json.encode(it)) == it


def test_no_steps_is_approved() -> None:
    it = build_iteration(PlannerAnswer("nothing"), "it-1", T0, T1)
    assert it["plan"] == [] and it["overallStatus"] == "approved"


def test_iteration_does_not_alias_answer_params() -> None:
    answer = PlannerAnswer("s", [PlanStep("a", "t", {"k": 1})])
    it = build_iteration(answer, "i", T0, T1)
    it["plan"][0]["intent"]["params"]["k"] = 2
    assert answer.steps[0].params == {"k": 1}


# --- actor ----------------------------------------------------------------------------------


def test_actor_with_agent() -> None:
    assert build_actor("m1", "it-1", {"id": "a1", "name": "Scout"}, "why") == {
        "kind": "ai",
        "principalId": "a1",
        "displayName": "Scout",
        "missionId": "m1",
        "iterationId": "it-1",
        "rationale": "why",
    }


def test_actor_legacy() -> None:
    assert build_actor("m1", "it-1", None, "why") == {
        "kind": "ai",
        "principalId": "legacy:ai-default",
        "displayName": "Mana",
        "missionId": "m1",
        "iterationId": "it-1",
        "rationale": "why",
    }


@pytest.mark.parametrize("agent", [None, {"id": "a1", "name": "Scout"}])
@pytest.mark.parametrize("iteration_id", [None, ""])
def test_actor_system_without_iteration(agent: Any, iteration_id: str | None) -> None:
    assert build_actor("m1", iteration_id, agent, "why") == {
        "kind": "system",
        "principalId": "system:mission-runner",
        "displayName": "Mission-Runner",
    }


def test_actor_agent_without_name_is_unnamed_as_upstream() -> None:
    assert build_actor("m1", "i", {"id": "a1"}, "")["displayName"] == "Unnamed"


def test_actor_agent_without_id_falls_back_to_legacy() -> None:
    assert build_actor("m1", "i", {"name": "Scout"}, "")["principalId"] == "legacy:ai-default"


def test_system_actor_is_a_fresh_dict() -> None:
    build_actor("m1", None, None, "")["displayName"] = "x"
    assert build_actor("m1", None, None, "")["displayName"] == "Mission-Runner"


# --- write-back -----------------------------------------------------------------------------

NOW = datetime(2026, 11, 26, 8, 30, 0, 5000, tzinfo=UTC)


def test_writeback_fields() -> None:
    old = [{"id": "it-0"}]
    # record_id is the snapshot's key: a record's own "id" field says nothing.
    mission = {"id": "not-the-key", "iterations": old, "title": "T"}
    it = build_iteration(PlannerAnswer("s"), "it-1", T0, T1)
    actor = build_actor("m1", "it-1", None, "r")
    wb = build_writeback(mission, "m1", "user-1", it, actor, NOW)
    assert wb == WriteBack(
        user_id="user-1",
        record_id="m1",
        data={"iterations": [{"id": "it-0"}, it]},
        field_meta={"iterations": "2026-11-26T08:30:00.005Z"},
        actor=actor,
    )
    assert (wb.app_id, wb.table_name, wb.op) == ("ai", "aiMissions", "update")
    assert (wb.client_id, wb.schema_version, wb.origin) == ("mana-ai-runner", 1, "agent")
    assert mission["iterations"] == [{"id": "it-0"}]  # the snapshot record is not mutated


@pytest.mark.parametrize("old", [None, "x", {"a": 1}, 3])
def test_writeback_non_list_iterations_start_fresh(old: Any) -> None:
    mission: dict[str, Any] = {"id": "m1"}
    if old is not None:
        mission["iterations"] = old
    wb = build_writeback(mission, "m1", "u", {"id": "it"}, {}, NOW)
    assert wb.data == {"iterations": [{"id": "it"}]}


@pytest.mark.parametrize("user_id", ["", None])
def test_writeback_empty_user_id_raises(user_id: Any) -> None:
    with pytest.raises(ValueError):
        build_writeback({"id": "m1"}, "m1", user_id, {"id": "it"}, {}, NOW)


@pytest.mark.parametrize("key", ["", None, 5])
def test_writeback_needs_the_mission_key(key: Any) -> None:
    with pytest.raises(ValueError):
        build_writeback({"id": "m1"}, key, "u", {"id": "it"}, {}, NOW)
    with pytest.raises(ValueError):
        build_advance(key, "u", NOW, NOW)


def test_rationale_is_the_objective() -> None:
    assert rationale_of({"objective": "Eine ruhige Woche"}) == "Eine ruhige Woche"
    assert rationale_of({"objective": None}) == rationale_of({}) == ""


def test_advance_row_moves_only_next_run_at_as_the_system() -> None:
    later = NOW + timedelta(minutes=30)
    wb = build_advance("m1", "u", later, NOW)
    assert (wb.data, wb.field_meta) == (
        {"nextRunAt": "2026-11-26T09:00:00.005Z"}, {"nextRunAt": "2026-11-26T08:30:00.005Z"})
    assert wb.actor["kind"] == "system" and wb.record_id == "m1"


_US_NOW = (NOW - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@given(
    ahead_us=st.integers(min_value=-10**10, max_value=10**10),
    others=st.lists(st.one_of(st.none(), st.integers(0, 2 * 10**15)), max_size=3),
)
def test_stamp_after_is_never_earlier_than_now_nor_a_clock(
    ahead_us: int, others: list[int | None]
) -> None:
    clocks = [_US_NOW + ahead_us, *others]
    stamp = stamp_after(NOW, clocks)
    assert stamp >= NOW
    written = iso(stamp)  # as it goes into field_meta: milliseconds
    parsed = datetime.fromisoformat(written.replace("Z", "+00:00"))
    us = (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert all(us > c for c in clocks if c is not None and c >= _US_NOW), (written, clocks)


def test_stamp_after_without_clocks_is_now() -> None:
    assert stamp_after(NOW, []) == stamp_after(NOW, [None]) == NOW


def test_writeback_is_frozen() -> None:
    wb = build_writeback({"id": "m1"}, "m1", "u", {"id": "it"}, {}, NOW)
    with pytest.raises(AttributeError):
        wb.user_id = ""  # type: ignore[misc]
