"""Field-level last-writer-wins merge of one record's changes (DESIGN §3). Pure: no I/O.

Invariant M1 (order independence): the state of a record is a pure function of the SET of
its rows. Each field keeps the cell with the greatest key

    (stamp, created, change_id)

where ``stamp`` is the field's ``field_meta`` time parsed to an instant (integer
microseconds since the Unix epoch, UTC), or the row's ``created_at`` when the field has no
usable stamp; ``created`` is the row's ``created_at`` in microseconds; ``change_id`` is the
row's id (lower-case uuid text). That key is a total order, so applying the rows in any
order, any number of times, in any batching, picks the same winner. Two cells with equal
keys come from the same row and hold the same value. A delete sets ``deleted`` for good,
whatever order it arrives in; later and earlier rows still merge their fields (harmless),
but ``materialize`` returns None.

How this differs from the upstream fold (rows sorted by ``created_at``; the first row
creates ``{id: record_id, ...data}``; a later row's field wins when its stamp is >= the
field's current stamp):

* Same winner in every other case. Upstream's current stamp only grows, so its final
  winner has the greatest stamp and, among equal stamps, the greatest ``created_at``:
  exactly our key without the change id.
* Exact ties of (stamp, created_at) between two rows: upstream lets the row that comes
  later in its sort win, i.e. whatever order the database returned rows with equal
  ``created_at`` (arrival order, not stable). We let the greater change id win.
* Stamps are compared as instants, not as strings: ``...Z`` and ``...+00:00``, or
  ``.5`` and ``.500000``, are the same instant. (Comparing the ISO strings, as a naive
  fold would, orders such stamps by their spelling.)
* A client clock behind the server: a field stamped earlier than the field's current
  stamp loses even when its row was created later. That is the same as upstream, and it
  is deliberate: the stamp is the writer's claim of when the field was edited.
* A ``field_meta`` stamp that does not parse falls back to ``created_at``, like a missing
  one; :func:`apply_change` counts such stamps so the caller can bump a metric.
* Naive stamps (no offset) are read as UTC.
* A delete row's ``data`` is ignored (it carries no field values).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from .model import Change

__all__ = [
    "Cell",
    "RecordState",
    "agent_visible",
    "apply_change",
    "decode_state",
    "encode_state",
    "fold",
    "materialize",
    "parse_stamp",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class Cell(msgspec.Struct, array_like=True):
    """The current winner of one field, with the key that made it win."""

    stamp: int  # field stamp, us since epoch UTC: field_meta time, else row created_at
    created: int  # row created_at, us since epoch
    change_id: str  # the row's change id (uuid text, lower case)
    value: Any  # the field value (any JSON)


class RecordState(msgspec.Struct):
    """Merge state of one record: enough to apply any further row without the log."""

    fields: dict[str, Cell] = msgspec.field(default_factory=dict)
    deleted: bool = False
    last_applied_us: int | None = None  # greatest created_at (us) of any row applied


# --------------------------------------------------------------------------- instants

_LONG_FRACTION = re.compile(r"([.,]\d{6})\d+")


@functools.lru_cache(maxsize=16384)
def _parse_instant(text: str) -> int | None:
    """ISO-8601 date-time -> integer microseconds since epoch, or None if it does not parse.

    Accepts 'T' or ' ' between date and time, 'Z' or any numeric offset, 0..6 fractional
    digits (more are truncated to microseconds). A naive value (no offset) is read as UTC:
    mana-sync's clients write UTC (JS ``toISOString``), and a missing offset is far more
    likely an omitted 'Z' than a local time. Cached: one write usually stamps every field
    with the same string, and re-delivered rows repeat them.
    """
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        # Fallbacks for spellings fromisoformat rejects: surrounding blanks, lower-case
        # 'z', more than 6 fractional digits (older 3.11 patch releases).
        s = _LONG_FRACTION.sub(r"\1", text.strip())
        if s[-1:] == "z":
            s = s[:-1] + "Z"
        if s == text:
            return None
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return (dt - _EPOCH) // _US
    except (OverflowError, ValueError):  # pragma: no cover - offsets keep us in range
        return None


def _us(dt: datetime) -> int:
    """A datetime -> integer microseconds since epoch (naive read as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _US


def parse_stamp(value: Any) -> int | None:
    """A ``field_meta[k]`` value -> its instant in microseconds, or None for "no stamp".

    Legacy shape: a plain ISO-8601 string. Current shape: ``{"at": ISO-8601, ...}``.
    Anything else (number, list, null, object without a string "at", a string that does
    not parse) is "no stamp".
    """
    if type(value) is str:
        return _parse_instant(value)
    if type(value) is dict:
        at = value.get("at")
        if type(at) is str:
            return _parse_instant(at)
    return None


# --------------------------------------------------------------------------- merge


def apply_change(state: RecordState, change: Change) -> int:
    """Merge one change into ``state`` in place.

    Returns how many ``field_meta`` stamps of the fields written were present as a string
    (plain, or an object's "at") but did not parse; those fields use ``created_at``.
    A missing stamp, or one of another type, is "no stamp" and not counted.
    """
    created = _us(change.created_at)
    last = state.last_applied_us
    if last is None or created > last:
        state.last_applied_us = created
    if change.op == "delete":
        state.deleted = True
        return 0

    change_id = change.id.lower()
    meta = change.field_meta
    fields = state.fields
    bad = 0
    for name, value in change.data.items():
        stamp = created
        m = meta.get(name) if meta else None
        if m is not None:
            if type(m) is dict:
                m = m.get("at")
            if type(m) is str:
                parsed = _parse_instant(m)
                if parsed is None:
                    bad += 1
                else:
                    stamp = parsed
        cur = fields.get(name)
        if cur is None or (stamp, created, change_id) > (cur.stamp, cur.created, cur.change_id):
            fields[name] = Cell(stamp, created, change_id, value)
    return bad


def fold(changes: Iterable[Change]) -> tuple[RecordState, int]:
    """Fold the changes of ONE record into a fresh state. Returns (state, bad stamps)."""
    state = RecordState()
    bad = 0
    for change in changes:
        bad += apply_change(state, change)
    return state, bad


def materialize(record_id: str, state: RecordState) -> dict[str, Any] | None:
    """The upstream-compatible record ``{"id": record_id, **fields}``.

    None when the record is deleted, or when no row was ever applied. A field named "id"
    in the data wins over the default, as in upstream's ``{id: record_id, ...data}``.
    """
    if state.deleted or state.last_applied_us is None:
        return None
    record: dict[str, Any] = {"id": record_id}
    for name, cell in state.fields.items():
        record[name] = cell.value
    return record


def agent_visible(record: dict[str, Any] | None) -> bool:
    """An agent counts as present unless deleted or its ``deletedAt`` is set (truthy)."""
    return record is not None and not record.get("deletedAt")


# --------------------------------------------------------------------------- storage

# 'deterministic' sorts dict keys, so equal states encode to equal bytes (cheap change
# detection) whatever order their fields were first written in.
# MessagePack in a BYTEA column: the server stores it without parsing, and deterministic
# key order makes equal states byte-identical (re-deliveries are detected by comparing).
_encoder = msgspec.msgpack.Encoder(order="deterministic")
_decoder = msgspec.msgpack.Decoder(RecordState)


def encode_state(state: RecordState) -> bytes:
    """MessagePack: ``{"fields":{"name":[stamp,created,change_id,value]},...}``."""
    return _encoder.encode(state)


def decode_state(buf: bytes) -> RecordState:
    return _decoder.decode(buf)
