"""A written oracle: upstream mana-ai's fold and agent reader, transcribed plainly.

Written from the rule as upstream states it (``mergeRaw`` in its snapshot refresh and
agent projection, ``fieldMetaTime``, ``toServerAgent``), not from ``consumer.merge``:

* a record's rows are folded in ``created_at`` order (rows with equal ``created_at`` in
  whatever order the database returns them: the order given here);
* ``op=delete`` anywhere: no record;
* the first row creates ``{id: record_id, ...data}``; its clocks are the keys of its
  ``field_meta``, each ``fieldMetaTime(meta[k]) || createdAt``;
* every later row's field wins when ``(fieldMetaTime(meta[k]) || createdAt) >= fm[k] ?? ''``;
* stamps are compared as TEXT; ``createdAt`` is JavaScript's ``toISOString()`` of the row's
  timestamp (milliseconds, ``Z``); JSON numbers are doubles; an agent whose merged
  ``deletedAt`` is truthy in the JavaScript sense is gone.

:class:`Rules` switches on, one by one, the differences we keep on purpose (README,
"Deliberate differences"). ``UPSTREAM`` is none of them; ``OURS`` is all of them, and the
property tests check that ``consumer.merge`` equals ``fold(..., OURS)`` on any input and
``fold(..., UPSTREAM)`` on inputs where the differences cannot show: so every difference
from upstream is one of the listed ones.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

US = 1_000_000


@dataclass(frozen=True)
class Row:
    """A ``sync_changes`` row of one record, as a fold reads it."""

    id: str  # change id (uuid text)
    record_id: str
    op: str
    data: dict[str, Any] | None
    field_meta: dict[str, Any] | None
    created_us: int  # created_at, microseconds since the epoch (PostgreSQL's precision)


@dataclass(frozen=True)
class Rules:
    """Which of our deliberate differences from upstream apply."""

    instants: bool = False  # stamps and created_at compare as instants (us), not as text
    bad_stamps_as_none: bool = False  # a stamp that does not parse counts as none
    change_id_ties: bool = False  # equal created_at ordered by change id; ties to the greater
    exact_integers: bool = False  # integers keep their value (upstream: doubles)

    def __post_init__(self) -> None:
        # Comparing instants needs every stamp to be one.
        assert self.bad_stamps_as_none or not self.instants


UPSTREAM = Rules()
OURS = Rules(instants=True, bad_stamps_as_none=True, change_id_ties=True, exact_integers=True)


# --------------------------------------------------------------------------- text and time

_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|([+-])(\d\d):?(\d\d))?"
)


def instant_us(text: str) -> int | None:
    """The stamp spellings the tests write, read as an instant; None when it does not parse.

    ``T`` or a blank, any fraction digits (past 6 truncated), ``Z``, ``+hh:mm``, ``+hhmm``
    or no offset (UTC)."""
    m = _ISO.fullmatch(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, zone, sign, oh, om = m.groups()
    try:
        days = date(int(y), int(mo), int(d)).toordinal() - date(1970, 1, 1).toordinal()
    except ValueError:
        return None
    if not (int(h) < 24 and int(mi) < 60 and int(s) < 60):
        return None
    seconds = ((days * 24 + int(h)) * 60 + int(mi)) * 60 + int(s)
    if zone and zone != "Z":
        offset = (int(oh) * 60 + int(om)) * 60
        seconds -= offset if sign == "+" else -offset
    return seconds * US + int(((frac or "") + "000000")[:6])


def iso_ms(us: int) -> str:
    """JavaScript's ``new Date(created_at).toISOString()``: milliseconds, ``Z``."""
    dt = datetime(1970, 1, 1) + timedelta(microseconds=us - us % 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def field_meta_time(meta: Any) -> str:
    """Upstream's ``fieldMetaTime``: the string, or the object's string ``at``, else ''."""
    if isinstance(meta, str):
        return meta
    if isinstance(meta, dict) and isinstance(meta.get("at"), str):
        return meta["at"]
    return ""


def js_truthy(value: Any) -> bool:
    if value is None or value is False or value == "":
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0 and value == value
    return True  # any other string, any object or array: [] and {} too


def as_double(value: Any) -> Any:
    """``JSON.parse``: every number a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [as_double(v) for v in value]
    if isinstance(value, dict):
        return {k: as_double(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- the fold


def _stamp(row: Row, meta: Any, rules: Rules) -> Any:
    """A field's clock value: ``fieldMetaTime(meta) || createdAt``, under the rules."""
    text = field_meta_time(meta)
    if text and rules.bad_stamps_as_none and instant_us(text) is None:
        text = ""
    if rules.instants:
        return instant_us(text) if text else row.created_us
    return text or iso_ms(row.created_us)


def fold(
    kind: str, record_id: str, rows: list[Row], rules: Rules = UPSTREAM
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """One record's rows (each once) -> (the record or None, its field clocks).

    ``kind`` is "mission" or "agent". The clocks are what upstream keeps in ``__fieldMeta``
    (we keep them beside the record instead, so they are returned apart).
    """
    if rules.change_id_ties:
        ordered = sorted(rows, key=lambda r: (r.created_us, r.id.lower()))
    else:
        ordered = sorted(rows, key=lambda r: r.created_us)  # stable: database order on ties
    record: dict[str, Any] | None = None
    fm: dict[str, Any] = {}
    for row in ordered:
        if row.op == "delete":
            return None, {}
        data = row.data if rules.exact_integers else as_double(row.data)
        if record is None:
            record = {"id": row.record_id, **(data or {})}
            for key, meta in (row.field_meta or {}).items():
                fm[key] = _stamp(row, meta, rules)
            continue
        if not data:
            continue
        for key, value in data.items():
            stamp = _stamp(row, (row.field_meta or {}).get(key), rules)
            if key not in fm or stamp >= fm[key]:  # fm[k] ?? '': no clock always loses
                record[key] = value
                fm[key] = stamp
    if record is not None and kind == "agent" and js_truthy(record.get("deletedAt")):
        return None, {}
    return record, fm


# --------------------------------------------------------------------------- agent reader


def js_number(value: Any) -> float:
    """JavaScript's ``Number(value)`` for the JSON values the tests write."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        if not value:
            return 0.0
        if len(value) == 1:
            return js_number("" if value[0] is None else js_text(value[0]))
        return math.nan
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0.0
        if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            return float(int(text, 16))
        if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
            return float(text)
        if re.fullmatch(r"[+-]?Infinity", text):
            return -math.inf if text[0] == "-" else math.inf
        return math.nan
    return math.nan  # an object


def js_text(value: Any) -> str:
    """JavaScript's ``String(value)`` for the JSON values the tests write."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, list):
        return ",".join("" if v is None else js_text(v) for v in value)
    return "[object Object]"


@dataclass(frozen=True)
class ServerAgent:
    """What upstream's tick reads of an agent (``toServerAgent``)."""

    id: str
    name: str
    state: Any
    max_concurrent: float
    max_tokens_per_day: float | None


def to_server_agent(record: dict[str, Any]) -> ServerAgent:
    tokens = record.get("maxTokensPerDay")
    return ServerAgent(
        id=js_text(record.get("id")),
        name=js_text("Unnamed" if record.get("name") is None else record["name"]),
        state="active" if record.get("state") is None else record["state"],
        max_concurrent=js_number(
            1 if record.get("maxConcurrentMissions") is None else record["maxConcurrentMissions"]
        ),
        # `maxTokensPerDay != null && >= 0` on a value kept only when typeof 'number'
        max_tokens_per_day=tokens
        if isinstance(tokens, int | float) and not isinstance(tokens, bool) and tokens >= 0
        else None,
    )


def load_active_agents(records: list[dict[str, Any]]) -> dict[str, ServerAgent]:
    """``loadActiveAgents`` + the tick's map: ``record->>'deletedAt' IS NULL``, by ``id``."""
    return {
        (a := to_server_agent(r)).id: a for r in records if r.get("deletedAt") is None
    }
