"""Instants: the one place that parses, normalises and formats the ISO-8601 times the log
carries (field stamps, nextRunAt, iteration times).

Inside the package an instant is either an aware UTC datetime or integer microseconds since
the Unix epoch (UTC); stamps compare as such, never as text. Pure, apart from `utcnow`, the
one clock read: the pure core is handed the time by its caller.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "EPOCH",
    "as_utc",
    "from_us",
    "iso",
    "parse_instant",
    "parse_us",
    "to_us",
    "utcnow",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_LONG_FRACTION = re.compile(r"([.,]\d{6})\d+")


# --------------------------------------------------------------------------- parsing


_PARSED: dict[str, int | None] = {}
_PARSED_MAX = 16384
_MISS = object()


def parse_us(text: str) -> int | None:
    """ISO-8601 date-time -> integer microseconds since epoch, or None if it does not parse.

    Accepts 'T' or ' ' between date and time, 'Z' or any numeric offset, 0..6 fractional
    digits (more are truncated to microseconds). A naive value (no offset) is read as UTC:
    mana-sync's clients write UTC (JS ``toISOString``), and a missing offset is far more
    likely an omitted 'Z' than a local time. Cached: one write usually stamps every field
    with the same string, and re-delivered rows repeat them. The cache is a plain dict
    emptied when full, not an LRU: most stamps of a catch-up are new, and an LRU's miss
    (its bookkeeping and eviction) cost more than the parse itself.
    """
    us = _PARSED.get(text, _MISS)
    if us is not _MISS:
        return us  # type: ignore[return-value]
    us = _parse_us(text)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[text] = us
    return us


def _parse_us(text: str) -> int | None:
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
        return (dt - EPOCH) // _US
    except (OverflowError, ValueError):  # pragma: no cover - offsets keep us in range
        return None


def parse_instant(value: Any) -> datetime | None:
    """An ISO-8601 instant ('Z' or an offset, any fractional digits) as an aware UTC datetime.

    Anything that is not a parseable string gives None, and so does an instant outside the
    years 1..9999 once read as UTC; a value without an offset is read as UTC. The same
    parser as `parse_us`, so that "due" and "newer" read instants alike.
    """
    if not isinstance(value, str) or not value:
        return None
    us = parse_us(value)
    if us is None:
        return None
    try:
        return from_us(us)
    except OverflowError:  # e.g. '9999-12-31T23:00:00-02:00' is in the year 10000 in UTC
        return None


# --------------------------------------------------------------------------- normalising


def as_utc(dt: datetime) -> datetime:
    """The same instant in UTC; a naive datetime is read as UTC (as `parse_us` reads text)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def to_us(dt: datetime) -> int:
    """A datetime -> integer microseconds since epoch (naive read as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // _US


def from_us(us: int) -> datetime:
    """Integer microseconds since epoch -> aware UTC datetime (OverflowError outside the
    years 1..9999)."""
    return EPOCH + timedelta(microseconds=us)


def utcnow() -> datetime:
    """Now, aware, in UTC: the default clock of the scheduler, the runner and the worker."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- formatting


def iso(dt: datetime, *, digits: int = 3) -> str:
    """The instant as mana's clients write it: UTC, 'Z', `digits` fractional digits
    (truncated, not rounded). The default, 3, is JS ``Date.prototype.toISOString()``,
    which every value we write into the log uses; 6 keeps microseconds (span attributes)."""
    if dt.tzinfo is None:
        # A naive time is ambiguous; in pure code that is a caller bug, not a guess.
        raise ValueError("datetime must be timezone-aware")
    if not 0 <= digits <= 6:
        raise ValueError("digits must be 0 to 6")
    u = dt.astimezone(UTC)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if digits:
        text += "." + f"{u.microsecond:06d}"[:digits]
    return text + "Z"
