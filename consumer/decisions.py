"""The gate table (docs/architecture.md#decisions): which due mission runs, and why not the others.

Pure: records in, a verdict out. No I/O and no clock reads; the caller passes the time, the
number of the agent's runs in flight and its rolling 24 h token usage.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec

# The package's one instant parser (the merge's too): "due" and "newer" read instants alike.
from .instants import parse_instant, to_us


class Decision(StrEnum):
    RAN = "ran"
    SKIPPED_ARCHIVED = "skipped-archived"
    SKIPPED_PAUSED = "skipped-paused"
    SKIPPED_CONCURRENCY = "skipped-concurrency"
    SKIPPED_BUDGET = "skipped-budget"
    SKIPPED_AGENT_MISSING = "skipped-agent-missing"


class Verdict(msgspec.Struct, frozen=True):
    decision: Decision
    reason: str  # human-readable, goes into the decision span
    silent: bool = False  # True only for skipped-archived: nothing is written, no noise


class AgentLimits(msgspec.Struct, frozen=True):
    """The agent's numeric limits as upstream reads them.

    ``max_concurrent`` is JavaScript's ``Number(maxConcurrentMissions ?? 1)``: missing or
    null means one run at a time; a value that does not convert is NaN, which never blocks
    (``n >= NaN`` is false). ``max_tokens_per_day`` counts only when it is a number >= 0;
    None means no budget.
    """

    max_concurrent: int | float = 1
    max_tokens_per_day: int | float | None = None


# JavaScript's StrWhiteSpaceChar, which Number() trims from a string.
_JS_SPACE = (
    " \t\n\v\f\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_DECIMAL = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_JS_RADIX = {"x": 16, "o": 8, "b": 2}


def js_string(value: Any) -> str:
    """JavaScript's ``String(value)`` for a JSON value."""
    if type(value) is str:
        return value
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        if value != value:
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)  # shortest round-trip form, as JavaScript prints it (mostly)
    if type(value) is list:
        return ",".join("" if v is None else js_string(v) for v in value)
    return "[object Object]"


def js_number(value: Any) -> int | float:
    """JavaScript's ``Number(value)`` for a JSON value; NaN when it does not convert.

    An integer keeps its exact value (JSON integers past 2^53 are exact here, a documented
    difference from upstream's doubles).
    """
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if type(value) is int or type(value) is float:
        return value
    if type(value) is list:
        return js_number(js_string(value))
    if type(value) is not str:
        return math.nan  # an object
    text = value.strip(_JS_SPACE)
    if not text:
        return 0
    if len(text) > 2 and text[0] == "0" and text[1] in "xXoObB":
        try:
            return int(text[2:], _JS_RADIX[text[1].lower()])
        except ValueError:
            return math.nan
    if _JS_DECIMAL.fullmatch(text):
        return float(text)
    return math.nan


def agent_gate_inputs(agent: dict[str, Any]) -> AgentLimits:
    """The limits exactly as upstream's ``toServerAgent`` reads them."""
    concurrent = agent.get("maxConcurrentMissions")
    tokens = agent.get("maxTokensPerDay")
    if not (type(tokens) is int or type(tokens) is float) or not tokens >= 0:
        tokens = None  # a string, a boolean, a negative number: no budget
    return AgentLimits(
        max_concurrent=1 if concurrent is None else js_number(concurrent),
        max_tokens_per_day=tokens,
    )


def agent_name(agent: dict[str, Any]) -> str:
    """The agent's display name as upstream reads it: ``String(name ?? 'Unnamed')``."""
    name = agent.get("name")
    return "Unnamed" if name is None else js_string(name)


def agent_present(agent: dict[str, Any] | None) -> bool:
    """Whether the scheduler finds the agent: upstream loads only the agents whose
    ``record->>'deletedAt' IS NULL`` (absent or JSON null), so ``""`` and ``false`` hide it
    too (a truthy one already removed the snapshot)."""
    return agent is not None and agent.get("deletedAt") is None


def is_legacy(mission: dict[str, Any]) -> bool:
    """A mission without a usable agentId runs under the default identity (upstream reads
    ``agentId`` only when it is a non-empty string)."""
    agent_id = mission.get("agentId")
    return type(agent_id) is not str or agent_id == ""


def agent_id_of(mission: dict[str, Any]) -> str | None:
    """The mission's agentId, or None for a legacy mission (no non-empty string)."""
    return None if is_legacy(mission) else mission["agentId"]


def runnable(mission: dict[str, Any] | None) -> bool:
    """Still active and not deleted (upstream's rule: any deletedAt but JSON null deletes)."""
    return (
        mission is not None
        and mission.get("state") == "active"
        and mission.get("deletedAt") is None
    )


def decide(
    mission: dict[str, Any],
    agent: dict[str, Any] | None,
    in_flight: int,
    tokens_used_24h: int,
) -> Verdict:
    """Decide one due mission. The first matching gate wins (docs/architecture.md#decisions)."""
    if is_legacy(mission):
        return Verdict(Decision.RAN, "legacy mission: default identity")

    # The documented order lists agent-missing as gate 5, after archived/paused/concurrency/
    # budget. But
    # those four read the agent's record; with no record none of them can match, so the
    # listed order and "missing first" give the same verdict. Deciding it first keeps the
    # remaining gates total over a real record. An agent with deletedAt set counts as
    # deleted; the scheduler's query already leaves such agents out, this is the safety net.
    if not agent_present(agent):
        return Verdict(
            Decision.SKIPPED_AGENT_MISSING,
            f"agent {mission.get('agentId')} not in projection",
        )
    assert agent is not None  # agent_present

    state = agent.get("state")
    if state == "archived":
        return Verdict(Decision.SKIPPED_ARCHIVED, "agent archived", silent=True)
    if state == "paused":
        return Verdict(Decision.SKIPPED_PAUSED, "agent paused")

    limits = agent_gate_inputs(agent)
    # A limit of 0 or below is taken literally: nothing may run / nothing may be spent.
    if in_flight >= limits.max_concurrent:
        return Verdict(
            Decision.SKIPPED_CONCURRENCY,
            f"{in_flight} of {js_string(limits.max_concurrent)} concurrent runs in flight",
        )
    if limits.max_tokens_per_day is not None and tokens_used_24h >= limits.max_tokens_per_day:
        return Verdict(
            Decision.SKIPPED_BUDGET,
            f"used {tokens_used_24h} of {js_string(limits.max_tokens_per_day)} tokens in 24h",
        )
    return Verdict(Decision.RAN, f"agent {state or 'active'}: all gates passed")


class Hold(msgspec.Struct, frozen=True):
    """Why a claimed occurrence must not run now: `gate` is the decision that would be made
    now (a Decision value), or what happened to the mission: "mission-gone",
    "mission-inactive", "moved" (due at another instant), "reassigned" (another agent)."""

    gate: str
    reason: str


def hold_at_attempt(
    mission: dict[str, Any] | None,
    agent: dict[str, Any] | None,
    agent_id: str | None,
    due_at: datetime,
    tokens_used_24h: int,
) -> Hold | None:
    """Checked at the start of every attempt at the occurrence (`due_at`, claimed for
    `agent_id`), with the mission and its agent as projected when the attempt was taken: a
    claim may wait in the queue and a retry waits out its backoff, and meanwhile the agent
    may be paused, archived, deleted or out of budget, and the mission paused, deleted,
    moved or given to another agent. Upstream decides every run afresh (a failed mission is
    due again at the next tick), so we do too: None when the attempt may run.

    The concurrency gate is not counted again: the occurrence holds its slot (a limit of 0
    or below still lets nothing run)."""
    if mission is None:
        return Hold("mission-gone", "the mission's snapshot is gone")
    if not runnable(mission):
        state = "deleted" if mission.get("deletedAt") is not None else mission.get("state")
        return Hold("mission-inactive", f"the mission is {js_string(state)}")
    at = due_instant(mission)
    # As instants: a datetime read in a session time zone with daylight saving never
    # compares equal to a UTC one during the fall-back hour.
    if at is None or to_us(at) != to_us(due_at):
        return Hold("moved", f"nextRunAt is now {js_string(mission.get('nextRunAt'))}")
    now_for = agent_id_of(mission)
    if now_for != agent_id:
        return Hold("reassigned", f"the mission's agent is now {now_for or 'none (legacy)'}")
    verdict = decide(mission, agent, 0, tokens_used_24h)
    if verdict.decision is Decision.RAN:
        return None
    return Hold(verdict.decision.value, verdict.reason)


# The nextRunAt spellings a mission can be due at: extended ISO-8601, a date alone, or a
# date and hh:mm[:ss[.fraction]] with 'Z' or an offset of at most 15:59 (none means UTC).
# The SQL twin, mana_ai.next_run_instant (migration 0011; mana_ai.mission_due_at and the
# ledger's prune call it), accepts exactly these and reads them to the same instant, so the
# due index, its backfill, the prune and this check agree. Anything else (week dates, basic
# format, other separators) is never due.
DUE_SPELLING = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]+)?)?"
    r"(?:[Zz]|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)?)?"
)


def due_instant(mission: dict[str, Any]) -> datetime | None:
    """When the mission falls due, or None when it never does: it is not active, it is
    deleted, or its nextRunAt is missing or not a due spelling (DUE_SPELLING).

    Deleted follows upstream's SQL rule `record->>'deletedAt' IS NOT NULL`: any deletedAt
    that is present and not JSON null (also "" and false) takes the mission out.
    """
    if mission.get("state") != "active" or mission.get("deletedAt") is not None:
        return None
    text = mission.get("nextRunAt")
    if not isinstance(text, str) or DUE_SPELLING.fullmatch(text) is None:
        return None
    return parse_instant(text)


def is_due(mission: dict[str, Any], now: datetime) -> bool:
    """Active, not deleted, and nextRunAt has come (see due_instant)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    at = due_instant(mission)
    return at is not None and at <= now
