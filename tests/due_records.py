"""Mission records as hypothesis draws them around NOW, and the due rule restated plainly:
shared by the DueSelector's pure tests (tests/unit/test_due_rules.py) and its tests on a
server (tests/test_due_selector.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from consumer.decisions import due_instant
from consumer.due import Due
from consumer.ledger import Occurrence

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
PLUS14 = timezone(timedelta(hours=14))
MINUS10 = timezone(timedelta(hours=-10))

# nextRunAt values around NOW: offsets whose text sorts far from their instant, spellings
# that are never due, and values that are not strings.
next_run_at = st.one_of(
    st.builds(
        lambda seconds, zone, spec: (NOW + timedelta(seconds=seconds)).astimezone(zone)
        .isoformat(timespec=spec),
        st.integers(-7200, 7200),
        st.sampled_from([UTC, PLUS14, MINUS10, timezone(timedelta(hours=5, minutes=30))]),
        st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    ),
    st.sampled_from(["soon", "2026-05-01", "2026-W18-5", "20260501T110000Z", ""]),
    st.none(),
    st.integers(),
)
mission_record = st.fixed_dictionaries(
    {"nextRunAt": next_run_at},
    optional={
        "state": st.sampled_from(["active", "active", "paused"]),
        "deletedAt": st.sampled_from([None, "", False, "2026-01-01T00:00:00Z"]),
        "agentId": st.sampled_from(["a1", "a2", "", None, 7]),
    },
).map(lambda r: {"state": "active", **r})
record_key = st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from("abcdefgh"))


def expected(records: dict[tuple[str, str], dict[str, Any]], now: datetime) -> list[Due]:
    """The rule, restated plainly: every record due at `now`, oldest first."""
    due = []
    for (user_id, mission_id), record in records.items():
        at = due_instant(record)
        if at is not None and at <= now:
            due.append(Due(Occurrence(user_id, mission_id, record["nextRunAt"], at), record))
    return sorted(due, key=lambda d: (d.occ.due_at, d.occ.user_id, d.occ.mission_id))
