"""consumer.validate: every rejection reason, and a good row. No database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from consumer.model import Change, MetaEntry, RawChange
from consumer.validate import Rejected, validate

WHEN = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
LIMIT = 1000


def raw(**overrides) -> RawChange:
    fields = dict(
        id="0b8f7c1e-6a7d-4c55-9a0e-3f7a1b2c3d4e",
        user_id="user-1",
        table_name="aiMissions",
        record_id="mission-1",
        op="update",
        data='{"state": "active", "nextRunAt": "2024-05-01T12:00:00Z"}',
        field_meta='{"state": "2024-05-01T11:59:00Z", "nextRunAt": {"at": "2024-05-01T11:59:00Z"}}',
        created_at=WHEN,
    )
    fields.update(overrides)
    return RawChange(**fields)


def test_good_row() -> None:
    change = validate(raw(), LIMIT)
    assert change == Change(
        id="0b8f7c1e-6a7d-4c55-9a0e-3f7a1b2c3d4e",
        user_id="user-1",
        table_name="aiMissions",
        record_id="mission-1",
        op="update",
        data={"state": "active", "nextRunAt": "2024-05-01T12:00:00Z"},
        field_meta={
            "state": "2024-05-01T11:59:00Z",
            # upstream's object shape comes typed (the merge reads its `at`)
            "nextRunAt": MetaEntry(at="2024-05-01T11:59:00Z"),
        },
        created_at=WHEN,
    )
    assert change.kind == "mission"


def test_good_agent_insert_without_field_meta() -> None:
    for meta in (None, "null", "{}"):
        change = validate(raw(table_name="agents", op="insert", field_meta=meta), LIMIT)
        assert isinstance(change, Change)
        assert change.field_meta == {}
        assert change.kind == "agent"


def test_non_utc_offset_is_fine() -> None:
    tz = timezone(timedelta(hours=2))
    change = validate(raw(created_at=WHEN.astimezone(tz)), LIMIT)
    assert isinstance(change, Change)
    assert change.created_at == WHEN


@pytest.mark.parametrize("data", [None, "null", "not json {", "[1,2]", '"x"'])
def test_delete_ignores_data(data: str | None) -> None:
    change = validate(raw(op="delete", data=data), LIMIT)
    assert isinstance(change, Change)
    assert change.op == "delete"
    assert change.data == {}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"op": "upsert"}, "unknown op 'upsert'"),
        ({"op": "INSERT"}, "unknown op 'INSERT'"),
        ({"op": ""}, "unknown op ''"),
        ({"op": "x" * 100}, "unknown op '" + "x" * 40 + "...'"),
        ({"id": ""}, "empty id"),
        ({"id": "  "}, "empty id"),
        ({"record_id": ""}, "empty record_id"),
        ({"record_id": " \t"}, "empty record_id"),
        ({"user_id": ""}, "empty user_id"),
        ({"user_id": "   "}, "empty user_id"),
        ({"table_name": "todos"}, "not our table"),
        ({"table_name": "aimissions"}, "not our table"),
        ({"created_at": WHEN.replace(tzinfo=None)}, "created_at has no time zone"),
        ({"data": None}, "data is not a JSON object"),
        ({"data": "null"}, "data is not a JSON object"),
        ({"data": "[1, 2]"}, "data is not a JSON object"),
        ({"data": '"text"'}, "data is not a JSON object"),
        ({"data": "42"}, "data is not a JSON object"),
        ({"op": "insert", "data": "null"}, "data is not a JSON object"),
        ({"data": '{"a": '}, "malformed JSON in data"),
        ({"data": ""}, "malformed JSON in data"),
        ({"field_meta": "[]"}, "field_meta is not a JSON object"),
        ({"field_meta": '"2024-05-01T00:00:00Z"'}, "field_meta is not a JSON object"),
        ({"field_meta": "{,}"}, "malformed JSON in field_meta"),
        ({"op": "delete", "field_meta": "[]"}, "field_meta is not a JSON object"),
    ],
)
def test_rejections(overrides: dict, reason: str) -> None:
    assert validate(raw(**overrides), LIMIT) == Rejected(reason)


def test_payload_too_large_counts_utf8_bytes_of_both_texts() -> None:
    data = '{"name": "' + "\u00e4" * 10 + '"}'  # 10 chars of 2 bytes each
    meta = '{"name": "2024-05-01T00:00:00Z"}'
    size = len(data.encode()) + len(meta.encode())
    assert size == len(data) + 10 + len(meta)
    ok = validate(raw(data=data, field_meta=meta), size)
    assert isinstance(ok, Change)
    assert validate(raw(data=data, field_meta=meta), size - 1) == Rejected(
        f"payload too large ({size} bytes > limit {size - 1})"
    )


def test_payload_limit_applies_to_deletes() -> None:
    result = validate(raw(op="delete", data="x" * 50, field_meta=None), 10)
    assert result == Rejected("payload too large (50 bytes > limit 10)")


def test_first_failing_check_wins() -> None:
    result = validate(raw(op="upsert", record_id="", data="{"), LIMIT)
    assert result == Rejected("unknown op 'upsert'")
