"""The gate table of DESIGN §5: which due mission runs, and why the others do not.

Pure: records in, a verdict out. No I/O and no clock reads; the caller passes the time, the
number of the agent's runs in flight and its rolling 24 h token usage.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

# One instant parser for the package (merge owns it; it is pure and cached).
from .merge import _parse_instant as _instant_us

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    """The agent's numeric limits, normalised: None means "no limit"."""

    max_concurrent: int | None = None
    max_tokens_per_day: int | None = None


def _as_limit(value: Any) -> int | None:
    """A JSON number as an integer threshold, or None when unset or unusable.

    bool is excluded although Python counts it as int: `true` is not a limit. NaN and
    infinities are treated as unset (an infinite limit is never reached anyway). A fractional
    limit is rounded up, which keeps `count >= limit` exact for the integer counts we compare.
    """
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return math.ceil(value)
    return value


def agent_gate_inputs(agent: dict[str, Any]) -> AgentLimits:
    return AgentLimits(
        max_concurrent=_as_limit(agent.get("maxConcurrentMissions")),
        max_tokens_per_day=_as_limit(agent.get("maxTokensPerDay")),
    )


def is_legacy(mission: dict[str, Any]) -> bool:
    """A mission without an agentId runs under the default identity (upstream behaviour)."""
    return mission.get("agentId") in (None, "")


def decide(
    mission: dict[str, Any],
    agent: dict[str, Any] | None,
    in_flight: int,
    tokens_used_24h: int,
) -> Verdict:
    """Decide one due mission. The first matching gate wins; see DESIGN §5 for the order."""
    if is_legacy(mission):
        return Verdict(Decision.RAN, "legacy mission: default identity")

    # DESIGN §5 lists agent-missing as gate 5, after archived/paused/concurrency/budget. But
    # those four read the agent's record; with no record none of them can match, so the
    # listed order and "missing first" give the same verdict. Deciding it first keeps the
    # remaining gates total over a real record. An agent with deletedAt set counts as
    # deleted (DESIGN §3); the caller normally passes None for it, this is the safety net.
    if agent is None or agent.get("deletedAt"):
        return Verdict(
            Decision.SKIPPED_AGENT_MISSING,
            f"agent {mission.get('agentId')} not in projection",
        )

    state = agent.get("state")
    if state == "archived":
        return Verdict(Decision.SKIPPED_ARCHIVED, "agent archived", silent=True)
    if state == "paused":
        return Verdict(Decision.SKIPPED_PAUSED, "agent paused")

    limits = agent_gate_inputs(agent)
    # A limit of 0 or below is taken literally: nothing may run / nothing may be spent.
    if limits.max_concurrent is not None and in_flight >= limits.max_concurrent:
        return Verdict(
            Decision.SKIPPED_CONCURRENCY,
            f"{in_flight} of {limits.max_concurrent} concurrent runs in flight",
        )
    if limits.max_tokens_per_day is not None and tokens_used_24h >= limits.max_tokens_per_day:
        return Verdict(
            Decision.SKIPPED_BUDGET,
            f"used {tokens_used_24h} of {limits.max_tokens_per_day} tokens in 24h",
        )
    return Verdict(Decision.RAN, f"agent {state or 'active'}: all gates passed")


def parse_instant(value: Any) -> datetime | None:
    """An ISO-8601 instant ('Z' or an offset, any fractional digits) as an aware UTC datetime.

    Anything that is not a parseable string gives None, and so does an instant outside the
    years 1..9999 once read as UTC; a value without an offset is read as UTC. Delegates to
    the merge's parser so that "due" and "newer" read instants alike.
    """
    if not isinstance(value, str) or not value:
        return None
    us = _instant_us(value)
    if us is None:
        return None
    try:
        return _EPOCH + timedelta(microseconds=us)
    except OverflowError:  # e.g. '9999-12-31T23:00:00-02:00' is in the year 10000 in UTC
        return None


# The nextRunAt spellings a mission can be due at: extended ISO-8601, a date alone, or a
# date and hh:mm[:ss[.fraction]] with 'Z' or an offset of at most 15:59 (none means UTC).
# The SQL twin, mana_ai.mission_due_at (migration 0008), accepts exactly these and reads
# them to the same instant, so the due index, its backfill and this check agree. Anything
# else (week dates, basic format, other separators) is never due.
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
