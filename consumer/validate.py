"""Validation of raw log rows before they are merged (docs/architecture.md#quarantine). No I/O.

A row that fails here goes to quarantine with ``Rejected.reason``; the reasons are short,
stable strings (an operator greps for them).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .model import AGENTS_TABLE, MISSIONS_TABLE, Change, RawChange

__all__ = ["Rejected", "validate"]

OPS = frozenset({"insert", "update", "delete"})
TABLES = frozenset({MISSIONS_TABLE, AGENTS_TABLE})

_decode = msgspec.json.Decoder().decode


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


def validate(raw: RawChange, max_bytes: int) -> Change | Rejected:
    """Check one row; return the decoded Change, or why it cannot be applied."""
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
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        return Rejected("created_at has no time zone")

    size = _utf8_len(raw.data) + _utf8_len(raw.field_meta)
    if size > max_bytes:
        return Rejected(f"payload too large ({size} bytes > limit {max_bytes})")

    data: dict[str, Any] = {}  # a delete's data is ignored, whatever it holds
    if op != "delete":
        decoded = _object(raw.data, "data", null_ok=False)
        if isinstance(decoded, Rejected):
            return decoded
        data = decoded
    meta = _object(raw.field_meta, "field_meta", null_ok=True)
    if isinstance(meta, Rejected):
        return meta

    return Change(
        id=raw.id,
        user_id=raw.user_id,
        table_name=raw.table_name,
        record_id=raw.record_id,
        op=op,
        data=data,
        field_meta=meta,
        created_at=created_at,
    )
