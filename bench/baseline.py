"""Upstream's polling fold, for the benchmark baseline only: the merge the polling tick runs
per (user, record), written from its documented behaviour. Pure, no I/O.

It is NOT our merge (consumer.merge): it keeps upstream's quirks on purpose, so the
baseline does the work upstream does and no more:

* rows are folded in created_at order; a delete anywhere drops the record;
* the first row (the stored snapshot, fed back as a synthetic insert, when there is one)
  creates ``{"id": record_id, **data}`` and takes its field stamps only from the keys of
  its field_meta (a stamp of another shape: the row's created_at);
* a later row's field wins when its stamp text is >= the field's stamp text (no stamp
  yet: always); stamps are compared as strings, not instants;
* agents: a record whose merged ``deletedAt`` is truthy (JavaScript sense) is dropped;
* the stamps are kept in the record under ``__fieldMeta``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

# Reads bench/sql/ files; it lived here first and tests still import it from here.
from bench.common import bench_sql  # noqa: F401

FIELD_META_KEY = "__fieldMeta"


def field_meta_time(meta: object) -> str:
    """The stamp of one field_meta entry: a plain string, or an object's string `at`;
    anything else: '' (no stamp)."""
    if isinstance(meta, str):
        return meta
    if isinstance(meta, Mapping):
        at = meta.get("at")
        if isinstance(at, str):
            return at
    return ""


def js_iso(at: datetime) -> str:
    """Date.prototype.toISOString(): UTC, milliseconds, 'Z'."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def js_truthy(value: object) -> bool:
    """JavaScript truthiness of a JSON value: objects and arrays, even empty, are truthy."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0 and value == value  # NaN is falsy
    if isinstance(value, str):
        return value != ""
    return True


class Row:
    """One change as the fold sees it."""

    __slots__ = ("created_at", "data", "field_meta", "op", "record_id")

    def __init__(
        self, record_id: str, op: str, data: Mapping[str, Any] | None,
        field_meta: Mapping[str, Any] | None, created_at: datetime,
    ) -> None:
        self.record_id = record_id
        self.op = op
        self.data = data
        self.field_meta = field_meta
        self.created_at = created_at


def seed_row(record_id: str, record: Mapping[str, Any], last_applied_at: datetime) -> Row:
    """The stored snapshot fed back in front of the new rows, as upstream does."""
    meta = record.get(FIELD_META_KEY)
    return Row(record_id, "insert", record, meta if isinstance(meta, Mapping) else None,
               last_applied_at)


def fold(rows: Iterable[Row], *, agent: bool = False) -> dict[str, Any] | None:
    """Upstream's mergeRaw over rows already in created_at order; None: no record."""
    record: dict[str, Any] | None = None
    stamps: dict[str, str] = {}
    for row in rows:
        if row.op == "delete":
            return None
        created = js_iso(row.created_at)
        if record is None:
            record = {"id": row.record_id, **(row.data or {})}
            stamps = {k: field_meta_time(v) or created for k, v in (row.field_meta or {}).items()}
            continue
        if not row.data:
            continue
        meta = row.field_meta or {}
        for key, value in row.data.items():
            stamp = field_meta_time(meta.get(key)) or created
            if stamp >= stamps.get(key, ""):
                record[key] = value
                stamps[key] = stamp
    if record is None:
        return None
    if agent and js_truthy(record.get("deletedAt")):
        return None
    record[FIELD_META_KEY] = stamps
    return record
