"""Planner answer → iteration → the one sync_changes row that writes it back.

The shapes are those of docs/architecture.md#runs-and-write-back.

Pure: the caller passes ids and times; nothing here reads a clock or touches the database.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from .decisions import agent_name
from .instants import from_us, iso

LEGACY_PRINCIPAL = "legacy:ai-default"
LEGACY_DISPLAY_NAME = "Mana"
SYSTEM_ACTOR: dict[str, Any] = {
    "kind": "system",
    "principalId": "system:mission-runner",
    "displayName": "Mission-Runner",
}


class PlanStep(msgspec.Struct):
    summary: str
    toolName: str  # camelCase: the wire name
    params: dict[str, Any] = {}
    rationale: str = ""


class PlannerAnswer(msgspec.Struct):
    summary: str
    steps: list[PlanStep] = []


class ParseFailure(Exception):
    """The planner's reply is not the JSON we asked for. Counted, never a crash."""


# One fenced block, ```json or bare ```, anywhere in the reply: models like to add prose.
_FENCE = re.compile(r"```[ \t]*(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)

_decoder = msgspec.json.Decoder(PlannerAnswer)


def parse_planner_reply(content: str) -> PlannerAnswer:
    """The planner's answer, from bare JSON or the first ```json fenced block."""
    if not isinstance(content, str):
        raise ParseFailure(f"reply is {type(content).__name__}, not text")
    text = content.strip()
    if not text.startswith("{"):
        match = _FENCE.search(text)
        if match is None:
            raise ParseFailure("reply is neither a JSON object nor a fenced JSON block")
        text = match.group(1).strip()
    try:
        return _decoder.decode(text)
    except msgspec.ValidationError as exc:
        raise ParseFailure(f"reply has the wrong shape: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ParseFailure(f"reply is not valid JSON: {exc}") from exc


def build_iteration(
    answer: PlannerAnswer, iteration_id: str, started_at: datetime, finished_at: datetime
) -> dict[str, Any]:
    plan = [
        {
            "id": f"{iteration_id}-{i}",
            "summary": step.summary,
            "intent": {"kind": "toolCall", "toolName": step.toolName, "params": dict(step.params)},
            "status": "planned",
        }
        for i, step in enumerate(answer.steps)
    ]
    return {
        "id": iteration_id,
        "startedAt": iso(started_at),
        "finishedAt": iso(finished_at),
        "plan": plan,
        "summary": answer.summary,
        # Nothing to review means nothing to approve: the iteration is done as it stands.
        "overallStatus": "awaiting-review" if plan else "approved",
        "source": "server",
    }


def rationale_of(mission: dict[str, Any]) -> str:
    """The actor's rationale: the mission's objective, as upstream writes it."""
    objective = mission.get("objective")
    return objective if isinstance(objective, str) else ""


def build_actor(
    mission_id: str, iteration_id: str | None, agent: dict[str, Any] | None, rationale: str
) -> dict[str, Any]:
    """The write's actor: the agent, else the legacy default identity, else the system.

    An 'ai' actor names the iteration it produced, so without an iteration id only the
    system actor fits, whether or not there is an agent.
    """
    if not iteration_id:
        return dict(SYSTEM_ACTOR)
    principal, display = LEGACY_PRINCIPAL, LEGACY_DISPLAY_NAME
    agent_id = agent.get("id") if agent is not None else None
    if agent is not None and isinstance(agent_id, str) and agent_id:
        principal = agent_id
        display = agent_name(agent)  # as upstream: String(name ?? 'Unnamed')
    return {
        "kind": "ai",
        "principalId": principal,
        "displayName": display,
        "missionId": mission_id,
        "iterationId": iteration_id,
        "rationale": rationale,
    }


class WriteBack(msgspec.Struct, frozen=True):
    """One sync_changes row, ready to insert inside a transaction scoped to user_id."""

    user_id: str
    record_id: str
    data: dict[str, Any]
    field_meta: dict[str, Any]
    actor: dict[str, Any]
    app_id: str = "ai"
    table_name: str = "aiMissions"
    op: str = "update"
    client_id: str = "mana-ai-runner"
    schema_version: int = 1
    origin: str = "agent"


def _key(user_id: str, record_id: str) -> None:
    # RLS scopes the write by user id; an empty one must never reach the database.
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("write-back needs a non-empty user id")
    # The snapshot's key, never a field of the record: a record's own "id" may say anything.
    if not isinstance(record_id, str) or not record_id:
        raise ValueError("write-back needs the mission's key")


def stamp_after(now: datetime, current: list[int | None]) -> datetime:
    """The stamp for fields whose current clocks (us since epoch) are `current`: `now`, or
    1 ms past the newest clock when that is ahead (a device clock running fast), so the
    write wins the field's last-writer-wins merge. 1 ms, because stamps are written with
    millisecond precision."""
    newest = max((c for c in current if c is not None), default=None)
    if newest is None:
        return now
    ahead = from_us(newest + 1000)
    return max(now, ahead)


def build_writeback(
    mission: dict[str, Any],
    record_id: str,
    user_id: str,
    iteration: dict[str, Any],
    actor: dict[str, Any],
    stamp: datetime,
) -> WriteBack:
    """The iteration appended to the mission's `iterations`, stamped `stamp`."""
    _key(user_id, record_id)
    old = mission.get("iterations")
    iterations = [*old, iteration] if isinstance(old, list) else [iteration]
    return WriteBack(
        user_id=user_id,
        record_id=record_id,
        data={"iterations": iterations},
        field_meta={"iterations": iso(stamp)},
        actor=actor,
    )


def with_next_run(wb: WriteBack, next_run: datetime, stamp: datetime) -> WriteBack:
    """The write-back row also moving nextRunAt (same row)."""
    return msgspec.structs.replace(
        wb,
        data={**wb.data, "nextRunAt": iso(next_run)},
        field_meta={**wb.field_meta, "nextRunAt": iso(stamp)},
    )


def build_advance(record_id: str, user_id: str, next_run: datetime, stamp: datetime) -> WriteBack:
    """A row of its own that only moves nextRunAt: an interval mission whose occurrence
    failed for good goes on with its cadence. No iteration: the system actor writes it."""
    _key(user_id, record_id)
    return WriteBack(
        user_id=user_id,
        record_id=record_id,
        data={"nextRunAt": iso(next_run)},
        field_meta={"nextRunAt": iso(stamp)},
        actor=dict(SYSTEM_ACTOR),
    )
