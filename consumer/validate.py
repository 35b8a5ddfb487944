"""Validation of raw log rows before they are merged (docs/architecture.md#quarantine). No I/O.

A row that fails here goes to quarantine with ``Rejected.reason``; the reasons are short,
stable strings (an operator greps for them).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import msgspec

from .model import AGENTS_TABLE, MISSIONS_TABLE, Change, MetaEntry, RawChange

__all__ = ["Rejected", "validate"]

OPS = frozenset({"insert", "update", "delete"})
TABLES = frozenset({MISSIONS_TABLE, AGENTS_TABLE})

_decode = msgspec.json.Decoder().decode
# field_meta in the shapes mana's clients write (a stamp string, or a MetaEntry per field):
# no dict per entry and actor. Anything else fails it and is decoded by `_decode`.
_decode_meta = msgspec.json.Decoder(dict[str, str | MetaEntry]).decode


class Rejected(msgspec.Struct, frozen=True):
    reason: str


def _utf8_len(text: str | None) -> int:
    if text is None:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _blank(value: str) -> bool:
    return not value or value.isspace()


def _object(text: str | None, what: str, null_ok: bool) -> dict[str, Any] | Rejected:
    """Decode the text of a JSON object. SQL NULL or JSON null -> {} when ``null_ok``."""
    value = None
    if text is not None:
        try:
            value = _decode(text)
        except RecursionError:
            # Valid JSON (jsonb has no depth limit) nested deeper than the decoder goes.
            return Rejected(f"{what} nested too deeply")
        except msgspec.ValidationError as exc:  # e.g. a number past a float's range
            return Rejected(f"unreadable JSON in {what}: {exc}")
        except msgspec.DecodeError:
            return Rejected(f"malformed JSON in {what}")
    if type(value) is dict:
        return value
    if value is None and null_ok:
        return {}
    return Rejected(f"{what} is not a JSON object")


def _rejected(text: str | None, what: str, null_ok: bool) -> Rejected:
    """Why the text of `what` is not a JSON object (see `_object`)."""
    decoded = _object(text, what, null_ok)
    if isinstance(decoded, Rejected):
        return decoded
    raise AssertionError(f"{what} decoded as an object the second time")  # pragma: no cover


def validate(raw: RawChange, max_bytes: int) -> Change | Rejected:
    """Check one row; return the decoded Change, or why it cannot be applied.

    A journal row that is not `missing` does as well (it has the same fields, `id` being
    its change id): the catch-up then builds no RawChange for a row that validates. The
    checks come in the order their reasons are given."""
    op = raw.op
    if op not in OPS:
        shown = op if len(op) <= 40 else op[:40] + "..."
        return Rejected(f"unknown op {shown!r}")
    if _blank(raw.id):
        return Rejected("empty id")
    if _blank(raw.record_id):
        return Rejected("empty record_id")
    if _blank(raw.user_id):
        return Rejected("empty user_id")
    if raw.table_name not in TABLES:
        return Rejected("not our table")
    created_at = raw.created_at
    if created_at is None:
        return Rejected(f"created_at out of range ({raw.created_at_text})")
    if created_at.tzinfo is not UTC and created_at.utcoffset() is None:  # also when naive
        return Rejected("created_at has no time zone")

    data_text = raw.data
    meta_text = raw.field_meta
    size = _utf8_len(data_text) + _utf8_len(meta_text)
    if size > max_bytes:
        return Rejected(f"payload too large ({size} bytes > limit {max_bytes})")

    # The common case decodes here; anything else goes through `_object` again, which
    # says why (a row that is rejected is decoded twice, a row that applies once).
    data: Any = {}  # a delete's data is ignored, whatever it holds
    if op != "delete":
        try:
            data = _decode(data_text) if data_text is not None else None
        except (RecursionError, msgspec.ValidationError, msgspec.DecodeError):
            data = None
        if type(data) is not dict:
            return _rejected(data_text, "data", null_ok=False)
    meta: Any = {}
    if meta_text is not None:
        try:
            meta = _decode_meta(meta_text)
        except (RecursionError, msgspec.ValidationError, msgspec.DecodeError):
            try:
                meta = _decode(meta_text)
            except (RecursionError, msgspec.ValidationError, msgspec.DecodeError):
                meta = False  # not an object: `_object` gives the reason
        if type(meta) is not dict:
            if meta is None:
                meta = {}  # JSON null
            else:
                return _rejected(meta_text, "field_meta", null_ok=True)

    # Positional, in field order: id, user_id, table_name, record_id, op, data,
    # field_meta, created_at.
    return Change(
        raw.id, raw.user_id, raw.table_name, raw.record_id, op, data, meta, created_at
    )
