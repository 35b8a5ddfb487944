"""Field-level last-writer-wins merge of one record's changes. Pure: no I/O.

The fold we reproduce is upstream's (mana-ai ``mergeRaw``): a record's rows in
``created_at`` order; a delete anywhere removes the record for good; the FIRST row
creates ``{id: record_id, ...data}`` and its field clocks come only from the keys of its
``field_meta`` (the key's stamp, or the row's ``created_at`` when the entry has no usable
stamp), so a field it writes without a ``field_meta`` entry has no clock and any later
write wins it, and a ``field_meta`` key without a value still sets that field's clock;
every LATER row's field wins when its stamp (the ``field_meta`` time, else the row's
``created_at``) is ``>=`` the field's clock, or the field has none.

Invariant M1 (order independence): the state is a pure function of the SET of the
record's rows. "First row" is the row with the smallest ``(created_at, change id)``,
whenever it arrives, so the state keeps it apart (:class:`FirstRow`: its values and its
clocks, meta-only keys included) and keeps in ``fields``, per field, the winner among all
OTHER rows: the cell with the greatest key ``(stamp, created, change_id)``. A row that
sorts before the current first row demotes it (it is merged into ``fields`` like any later
row; its meta-only keys then do nothing). A duplicate changes nothing. Both parts are
order independent (a minimum and a per-field maximum), hence so is :func:`materialize`:
a field takes the later winner when the first row has no clock for it or the winner's
key is greater than the first row's ``(clock, created, change_id)`` for that field, i.e.
its stamp is ``>=`` the clock, since every later row sorts after the first; else the first
row's value; a meta-only key with no later winner leaves the field absent.

Where we differ from upstream on purpose (README, "Deliberate differences"):

* stamps and ``created_at`` compare as instants (integer microseconds, UTC), not as text:
  ``Z`` and ``+00:00``, ``.5`` and ``.500000`` are the same instant;
* exact ties of ``(stamp, created_at)`` go to the greater change id (upstream: whichever
  row the database happened to return last), and rows with equal ``created_at`` are
  ordered by change id to find the first row;
* a ``field_meta`` stamp that does not parse counts as none: ``created_at`` is used
  (upstream compares the text, so ``"not-a-date"`` wins forever); :func:`apply_change`
  counts them for a metric;
* naive stamps (no offset) are read as UTC; a delete row's ``data`` is ignored.

States written before the first row was kept apart (no ``first``, fields present) still
decode and keep merging by the old rule (every row a "later" row, first row stamped with
its ``created_at``) until ``consumer replay`` rebuilds them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from .instants import parse_us, to_us
from .model import Change, MetaEntry

__all__ = [
    "Cell",
    "FirstRow",
    "RecordState",
    "agent_visible",
    "apply_change",
    "decode_state",
    "encode_state",
    "field_clock",
    "fold",
    "is_legacy",
    "js_truthy",
    "materialize",
    "parse_stamp",
]

class Cell(msgspec.Struct, array_like=True, gc=False):
    """The current winner of one field, with the key that made it win."""

    stamp: int  # field stamp, us since epoch UTC: field_meta time, else row created_at
    created: int  # row created_at, us since epoch
    change_id: str  # the row's change id (uuid text, lower case)
    value: Any  # the field value (any JSON)


class FirstRow(msgspec.Struct, array_like=True, gc=False):
    """The record's first row (smallest (created_at, change id)): its values and clocks."""

    created: int  # row created_at, us since epoch
    change_id: str  # uuid text, lower case
    data: dict[str, Any]  # the row's data, as written
    clocks: dict[str, int]  # every field_meta key -> its stamp, else the row's created_at


class RecordState(msgspec.Struct, gc=False):
    """Merge state of one record: enough to apply any further row without the log."""

    fields: dict[str, Cell] = msgspec.field(default_factory=dict)  # winners of later rows
    deleted: bool = False
    last_applied_us: int | None = None  # greatest created_at (us) of any row applied
    first: FirstRow | None = None  # None: no non-delete row yet, or a state of the old rule


def is_legacy(state: RecordState) -> bool:
    """A state written under the old rule (before the first row was kept apart).

    A non-delete row always becomes ``first`` now, so a state with merged rows but no
    ``first`` can only come from the old rule.
    """
    return state.first is None and (
        bool(state.fields) or (state.last_applied_us is not None and not state.deleted)
    )


# --------------------------------------------------------------------------- stamps


def parse_stamp(value: Any) -> int | None:
    """A ``field_meta[k]`` value -> its instant in microseconds, or None for "no stamp".

    Legacy shape: a plain ISO-8601 string. Current shape: ``{"at": ISO-8601, ...}`` (a
    dict, or a MetaEntry as validate decodes it).
    Anything else (number, list, null, object without a string "at", a string that does
    not parse) is "no stamp".
    """
    if type(value) is str:
        return parse_us(value)
    if type(value) is dict:
        at = value.get("at")
        if type(at) is str:
            return parse_us(at)
    elif type(value) is MetaEntry:
        if type(value.at) is str:
            return parse_us(value.at)
    return None


# --------------------------------------------------------------------------- merge


def _stamps(meta: dict[str, Any], names: Iterable[str], created: int) -> tuple[list[int], int]:
    """The stamp of each name (field_meta time, else ``created``), and how many stamps were
    present as a string (plain, or an object's "at") but did not parse."""
    stamps: list[int] = []
    bad = 0
    for name in names:
        stamp = created
        m = meta.get(name) if meta else None
        if m is not None:
            if type(m) is dict:
                m = m.get("at")
            elif type(m) is MetaEntry:
                m = m.at
            if type(m) is str:
                parsed = parse_us(m)
                if parsed is None:
                    bad += 1
                else:
                    stamp = parsed
        stamps.append(stamp)
    return stamps, bad


def _merge_later(
    fields: dict[str, Cell],
    data: dict[str, Any],
    stamps: list[int],
    created: int,
    change_id: str,
) -> None:
    """Merge the values of a row that is not the first row: per field, the greatest key."""
    for (name, value), stamp in zip(data.items(), stamps, strict=True):
        cur = fields.get(name)
        if cur is None or (stamp, created, change_id) > (cur.stamp, cur.created, cur.change_id):
            fields[name] = Cell(stamp, created, change_id, value)


def _merge_row(
    fields: dict[str, Cell],
    data: dict[str, Any],
    meta: dict[str, Any],
    created: int,
    change_id: str,
) -> int:
    """`_stamps` and `_merge_later` in one loop (the common case: a row after the first
    one; the catch-up folds many of them): the same stamps, the same winners, the same
    count of stamps that did not parse."""
    bad = 0
    get = meta.get if meta else None
    # One write usually stamps every field with the same text: parse it once per row.
    text: str | None = None
    parsed: int | None = None
    for name, value in data.items():
        stamp = created
        if get is not None:
            m = get(name)
            if m is not None:
                if type(m) is MetaEntry:
                    m = m.at
                elif type(m) is dict:
                    m = m.get("at")
                if type(m) is str:
                    if m != text:
                        text = m
                        parsed = parse_us(m)
                    if parsed is None:
                        bad += 1
                    else:
                        stamp = parsed
        cur = fields.get(name)
        # (stamp, created, change_id) > the cell's key, compared part by part.
        if (
            cur is None
            or stamp > cur.stamp
            or (
                stamp == cur.stamp
                and (
                    created > cur.created or (created == cur.created and change_id > cur.change_id)
                )
            )
        ):
            fields[name] = Cell(stamp, created, change_id, value)
    return bad


def apply_change(state: RecordState, change: Change) -> int:
    """Merge one change into ``state`` in place.

    Returns how many ``field_meta`` stamps of the fields written were present as a string
    (plain, or an object's "at") but did not parse; those fields use ``created_at``.
    A missing stamp, or one of another type, is "no stamp" and not counted.
    """
    created = to_us(change.created_at)
    last = state.last_applied_us
    first = state.first
    legacy = last is not None and is_legacy(state)  # read before this row counts
    if last is None or created > last:
        state.last_applied_us = created
    if change.op == "delete":
        state.deleted = True
        return 0

    change_id = change.id.lower()
    data = change.data
    if legacy or (
        first is not None
        and (
            created > first.created
            or (created == first.created and change_id > first.change_id)
        )
    ):
        return _merge_row(state.fields, data, change.field_meta, created, change_id)
    if first is None:
        state.first, bad = _first_row(change, created, change_id)
        return bad
    if (created, change_id) < (first.created, first.change_id):
        # The new row sorts first: the old first row becomes an ordinary later row. Its
        # stamps for that role are its clocks where it had one, else its created_at.
        old = first.clocks
        _merge_later(
            state.fields,
            first.data,
            [old.get(name, first.created) for name in first.data],
            first.created,
            first.change_id,
        )
        state.first, bad = _first_row(change, created, change_id)
        return bad
    return _stamps(change.field_meta, data, created)[1]  # the first row again: no change


def _first_row(change: Change, created: int, change_id: str) -> tuple[FirstRow, int]:
    """A row as the record's first row: every ``field_meta`` key sets a clock, to its stamp
    when one parses, else to the row's ``created_at`` (upstream's ``fieldMetaTime(m) ||
    createdAt``, with an unparseable stamp counting as none). Also how many stamps of the
    fields it writes did not parse (as `_stamps` counts them over ``data``), from the
    same pass over ``field_meta``."""
    meta = change.field_meta
    data = change.data
    clocks: dict[str, int] = {}
    bad = 0
    if meta:
        for name, m in meta.items():
            stamp = created
            if type(m) is MetaEntry:
                m = m.at
            elif type(m) is dict:
                m = m.get("at")
            if type(m) is str:
                parsed = parse_us(m)
                if parsed is None:
                    if name in data:
                        bad += 1
                else:
                    stamp = parsed
            clocks[name] = stamp
    return FirstRow(created, change_id, data, clocks), bad


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
    first = state.first
    if first is None:  # a state of the old rule: every row merged alike
        for name, cell in state.fields.items():
            record[name] = cell.value
        return record
    record.update(first.data)
    clocks = first.clocks
    for name, cell in state.fields.items():
        clock = clocks.get(name)
        # Every row in `fields` sorts after the first row, so its key beats the first
        # row's (clock, created, change_id) exactly when its stamp is >= the clock.
        if clock is None or cell.stamp >= clock:
            record[name] = cell.value
    return record


def field_clock(state: RecordState, name: str) -> int | None:
    """The clock (us) of the field's current value: a new write wins it when its stamp is
    >= this (its created_at being later). None when the field has no clock, so any write
    wins it."""
    cell = state.fields.get(name)
    first = state.first
    if first is None:  # no row yet, or a state of the old rule
        return None if cell is None else cell.stamp
    clock = first.clocks.get(name)
    if cell is not None and (clock is None or cell.stamp >= clock):
        return cell.stamp
    return clock


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value: ``[]`` and ``{}`` are truthy, unlike Python's."""
    if value is None or value is False or value == "":
        return False
    if type(value) is int or type(value) is float:
        return value != 0
    return True


def agent_visible(record: dict[str, Any] | None) -> bool:
    """An agent snapshot exists unless the record is deleted or its merged ``deletedAt`` is
    truthy in the JavaScript sense (upstream drops it then; ``[]`` and ``{}`` count)."""
    return record is not None and not js_truthy(record.get("deletedAt"))


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
