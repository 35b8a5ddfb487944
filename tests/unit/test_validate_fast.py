"""validate's typed decode of field_meta (MetaEntry instead of a dict per entry) against
the plain JSON decode it replaces: for any field_meta text, the same rejection reason, or
the same merge (clocks bytes, bad stamps). No database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import validate as validate_module
from consumer.merge import RecordState, apply_change, encode_state, parse_stamp
from consumer.model import Change, MetaEntry, RawChange
from consumer.validate import Rejected, validate

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BIG = "__BIG_NUMBER__"  # replaced in the text by a float JSON accepts and msgspec cannot hold

stamps = st.one_of(
    st.sampled_from(["2024-05-01T11:59:00Z", "2024-05-01T12:00:00.5+00:00",
                     "2024-05-01 12:30:00", "not-a-date", "", "2024-05-01T12:00:00.000Z"]),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),  # what MessagePack holds
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5), st.just(BIG), stamps,
)
anything = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)
actors = st.one_of(anything, st.fixed_dictionaries({}, optional={
    "kind": st.one_of(st.text(max_size=4), anything),
    "principalId": st.one_of(st.text(max_size=6), anything),
    "displayName": st.text(max_size=3),
}))
entries = st.one_of(stamps, anything, st.fixed_dictionaries({}, optional={
    "at": st.one_of(stamps, anything),
    "actor": actors,
    "origin": st.one_of(st.sampled_from(["user", "agent"]), anything),
    "other": anything,
}))
names = st.sampled_from(["state", "nextRunAt", "title", "memory", "id"])
metas = st.one_of(st.dictionaries(names, entries, max_size=4), anything)


def _text(value: Any) -> str:
    return json.dumps(value).replace(json.dumps(BIG), "1e999")


def _raw(meta_text: str | None, data: dict[str, Any], created: datetime) -> RawChange:
    return RawChange(id="0b8f7c1e-6a7d-4c55-9a0e-3f7a1b2c3d4e", user_id="user-1",
                     table_name="aiMissions", record_id="mission-1", op="update",
                     data=json.dumps(data), field_meta=meta_text, created_at=created)


def _generic(raw: RawChange) -> Change | Rejected:
    """validate as it was: every field_meta decoded as plain JSON."""
    typed = validate_module._decode_meta
    validate_module._decode_meta = validate_module._decode
    try:
        return validate(raw, 100_000)
    finally:
        validate_module._decode_meta = typed


def _folds(change: Change) -> list[tuple[bytes, int]]:
    """The change as a record's first row, as a later row and as an earlier one."""
    first = Change(change.id.replace("0b", "ff", 1), "user-1", "aiMissions", "mission-1",
                   "insert", {"state": "active", "title": "t"}, {"state": "2024-05-01T12:00:00Z"},
                   change.created_at - timedelta(seconds=1))
    later = msgspec.structs.replace(first, created_at=change.created_at + timedelta(seconds=1))
    out = []
    for rows in ([change], [first, change], [change, later], [later, change]):
        state = RecordState()
        bad = sum(apply_change(state, row) for row in rows)
        out.append((encode_state(state), bad))
    return out


@settings(max_examples=400)
@given(meta=metas, data=st.dictionaries(names, anything, max_size=4),
       null_text=st.booleans())
def test_typed_field_meta_validates_and_merges_as_plain_json(
    meta: Any, data: dict[str, Any], null_text: bool
) -> None:
    raw = _raw(None if null_text else _text(meta), data, WHEN)
    fast, slow = validate(raw, 100_000), _generic(raw)
    if isinstance(slow, Rejected):
        assert fast == slow
        return
    assert isinstance(fast, Change)
    assert fast.data == slow.data and list(fast.field_meta) == list(slow.field_meta)
    for name, entry in fast.field_meta.items():
        assert parse_stamp(entry) == parse_stamp(slow.field_meta[name])
        if type(entry) is MetaEntry:  # only where plain JSON read the same entry
            assert isinstance(slow.field_meta[name], dict)
    assert _folds(fast) == _folds(slow)


@pytest.mark.parametrize("meta", [
    '{"state": {"at": "2024-05-01T11:59:00Z", "actor": {"kind": "user", "x": 1e999}}}',
    '{"state": {"at": "2024-05-01T11:59:00Z", "origin": 1e999}}',
    '{"state": {"at": "2024-05-01T11:59:00Z", "other": 1e999}}',
    '{"state": {"at": 1e999}}',
])
def test_a_number_out_of_range_anywhere_in_field_meta_is_still_rejected(meta: str) -> None:
    # A typed decode skips the values of keys it does not know; MetaEntry forbids them, so
    # nothing is skipped unread and the reason is the plain decode's.
    result = validate(_raw(meta, {"state": "active"}, WHEN), 100_000)
    assert isinstance(result, Rejected)
    assert result.reason.startswith("unreadable JSON in field_meta")


def test_upstream_entries_come_typed() -> None:
    meta = ('{"state": {"at": "2024-05-01T11:59:00Z", "actor": {"kind": "user", '
            '"principalId": "u"}, "origin": "user"}, "title": "2024-05-01T11:00:00Z"}')
    result = validate(_raw(meta, {"state": "active"}, WHEN), 100_000)
    assert isinstance(result, Change)
    assert type(result.field_meta["state"]) is MetaEntry
    assert result.field_meta["title"] == "2024-05-01T11:00:00Z"
