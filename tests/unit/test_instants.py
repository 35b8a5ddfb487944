"""consumer.instants: the one parser, normaliser and formatter of instants. No database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.instants import (
    EPOCH,
    as_utc,
    from_us,
    iso,
    parse_instant,
    parse_us,
    to_us,
    utcnow,
)

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
JS_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")

# Offsets as clients write them (whole minutes, within a day); years kept off the edges so
# that every offset spelling of an instant stays inside 1..9999 in UTC and locally.
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda m: timezone(timedelta(minutes=m))
)
instants = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets
)


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T08:00:00Z", NOW),
        ("2026-11-26T08:00:00.000Z", NOW),
        ("2026-11-26T08:00:00.000000+00:00", NOW),
        ("2026-11-26T10:00:00+02:00", NOW),
        ("2026-11-26T08:00:00.123456789Z", NOW + timedelta(microseconds=123456)),
        ("2026-11-26T08:00:00", NOW),  # no offset: read as UTC
        ("2026-11-26 08:00:00z", NOW),
        (" 2026-11-26T08:00:00Z ", NOW),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected
    assert parse_us(text) == to_us(expected)


@pytest.mark.parametrize("value", [None, "", "tomorrow", 1764144000000, "2026-13-01T00:00:00Z"])
def test_parse_instant_rejects(value: Any) -> None:
    assert parse_instant(value) is None


def test_parse_instant_out_of_range_is_none() -> None:
    # In the year 10000 once in UTC: parse_us still gives its microseconds.
    assert parse_instant("9999-12-31T23:00:00-02:00") is None
    late = datetime(9999, 12, 31, 23, tzinfo=UTC)
    assert parse_us("9999-12-31T23:00:00-02:00") == to_us(late) + 2 * 3600 * 10**6


def test_iso_matches_js_to_iso_string() -> None:
    t0 = datetime(2026, 11, 26, 8, 29, 6, 123456, tzinfo=UTC)
    assert iso(t0) == "2026-11-26T08:29:06.123Z"  # truncated, like JS Date (ms precision)
    assert iso(t0, digits=6) == "2026-11-26T08:29:06.123456Z"
    assert iso(t0, digits=0) == "2026-11-26T08:29:06Z"
    assert iso(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"
    plus2 = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 1, 1, 1, 0, 0, 999999, tzinfo=plus2)) == "2025-12-31T23:00:00.999Z"
    assert iso(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00.000Z"


def test_iso_rejects_naive_and_odd_precision() -> None:
    with pytest.raises(ValueError):
        iso(datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        iso(NOW, digits=7)


def test_utcnow_is_aware_utc() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)
    assert from_us(0) == EPOCH


# --------------------------------------------------------------------------- properties


@given(at=instants)
def test_round_trip_keeps_the_instant(at: datetime) -> None:
    """Formatted with microseconds and parsed back: the same instant, in UTC."""
    back = parse_instant(iso(at, digits=6))
    assert back == at and back is not None and back.tzinfo is UTC
    assert parse_us(iso(at, digits=6)) == to_us(at)


@given(at=instants)
def test_js_format_truncates_to_milliseconds(at: datetime) -> None:
    text = iso(at)
    assert JS_ISO.fullmatch(text), text
    us = to_us(at)
    assert parse_us(text) == us - us % 1000  # truncated towards the past, as JS does


@given(at=instants, zone=offsets)
def test_format_does_not_depend_on_the_zone_it_is_given_in(at: datetime, zone: timezone) -> None:
    assert iso(at.astimezone(zone), digits=6) == iso(at, digits=6) == iso(as_utc(at), digits=6)


@given(us=st.integers(min_value=to_us(datetime(1, 1, 1)), max_value=to_us(datetime(9999, 12, 31))))
def test_microseconds_round_trip(us: int) -> None:
    assert to_us(from_us(us)) == us
    assert from_us(us).tzinfo is UTC


@given(a=instants, b=instants)
def test_parsed_instants_order_as_the_instants(a: datetime, b: datetime) -> None:
    pa, pb = parse_us(iso(a, digits=6)), parse_us(iso(b, digits=6))
    assert pa is not None and pb is not None
    assert (pa < pb) == (a < b) and (pa == pb) == (a == b)


@given(
    at=instants,
    zone=offsets,
    sep=st.sampled_from(["T", " "]),
    digits=st.integers(min_value=0, max_value=9),
    extra=st.text(alphabet="0123456789", min_size=3, max_size=3),
    utc_as=st.sampled_from(["Z", "z", "+00:00", ""]),
    blanks=st.booleans(),
)
def test_every_spelling_of_an_instant_normalises_to_it(
    at: datetime, zone: timezone, sep: str, digits: int, extra: str, utc_as: str, blanks: bool
) -> None:
    """Any offset, either separator, 'Z', 'z', '+00:00' or none for UTC, 0 to 9 fractional
    digits (past 6 truncated): the instant the text names, whatever zone it is spelt in."""
    local = at.astimezone(zone)
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if local.year < 1000:
        text = f"{local.year:04d}" + text[text.index("-"):]
    fraction = f"{local.microsecond:06d}{extra}"[:digits]
    if digits:
        text += "." + fraction
    offset = local.utcoffset()
    assert offset is not None
    if offset == timedelta(0):
        text += utc_as
    else:
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    if blanks:
        text = f" {text} "
    kept = local.replace(microsecond=int(f"{fraction[:6]:0<6}"))
    assert parse_us(text) == to_us(kept), text
    assert parse_instant(text) == kept


@given(naive=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
def test_naive_is_read_as_utc(naive: datetime) -> None:
    aware = naive.replace(tzinfo=UTC)
    assert as_utc(naive) == aware and as_utc(naive).tzinfo is UTC
    assert to_us(naive) == to_us(aware)
    assert parse_us(naive.isoformat()) == to_us(aware)


@given(text=st.text(max_size=40))
def test_any_text_parses_or_gives_none(text: str) -> None:
    """Bad input gives None, never an exception: the merge then uses the row's created_at."""
    us = parse_us(text)
    assert us is None or isinstance(us, int)
    parsed = parse_instant(text)
    assert parsed is None or (parsed.tzinfo is UTC and us == to_us(parsed))


def test_the_parse_cache_stays_bounded_and_answers_as_the_parse() -> None:
    from consumer import instants

    base = datetime(2025, 1, 1, tzinfo=UTC)
    texts = [(base + timedelta(milliseconds=i)).isoformat()
             for i in range(instants._PARSED_MAX + 10)]
    texts += ["not-a-date", texts[0]]
    for text in texts:
        assert parse_us(text) == instants._parse_us(text)
        assert len(instants._PARSED) <= instants._PARSED_MAX
    assert parse_us("not-a-date") is None  # a cached None is an answer, not a miss
