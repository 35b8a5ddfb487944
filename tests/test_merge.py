"""consumer.merge: invariant M1 (order independence) and agreement with the upstream fold.

Pure tests, no database. The property tests generate small histories in which equal
stamps and equal created_at are frequent, on purpose.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.merge import (
    Cell,
    RecordState,
    agent_visible,
    apply_change,
    decode_state,
    encode_state,
    fold,
    materialize,
    parse_stamp,
)
from consumer.model import Change

BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
BASE_US = (BASE - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
SECOND = 1_000_000


def uid(n: int) -> str:
    """Deterministic uuid-like id; the scramble makes id order unrelated to creation order."""
    return f"{(n * 0x9E3779B1) & 0xFFFFFFFF:08x}-0000-4000-8000-{n:012x}"


def at_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def change(
    n: int,
    op: str = "update",
    data: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    created_us: int = BASE_US,
    record_id: str = "m1",
    table: str = "aiMissions",
) -> Change:
    return Change(
        id=uid(n),
        user_id="u1",
        table_name=table,
        record_id=record_id,
        op=op,
        data=data or {},
        field_meta=meta or {},
        created_at=at_us(created_us),
    )


# --------------------------------------------------------------------------- stamp text

# label -> offset in minutes; "" is a naive stamp (read as UTC)
OFFSETS = {"Z": 0, "+00:00": 0, "+02:00": 120, "-05:30": -330, "+0100": 60, "": 0}


def format_stamp(us: int, label: str, digits: int, sep: str) -> str:
    """ISO text of the instant `us`, in the zone `label`, with at least `digits` fraction
    digits (more when needed to stay exact; 7..9 pad with zeros)."""
    local = at_us(us) + timedelta(minutes=OFFSETS[label])
    frac = f"{local.microsecond:06d}"
    digits = max(digits, len(frac.rstrip("0")))
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + (frac + "000")[:digits]
    return text + label


_ISO = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|([+-])(\d\d):?(\d\d))?"
)


def oracle_stamp(text: Any) -> int | None:
    """An independent parser for the stamp texts these tests generate."""
    if isinstance(text, dict):
        text = text.get("at")
    if not isinstance(text, str):
        return None
    m = _ISO.fullmatch(text)
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
    return seconds * SECOND + int(((frac or "") + "000000")[:6])


# --------------------------------------------------------------------------- strategies

FIELDS = ["title", "state", "nextRunAt", "deletedAt", "id"]
# absolute stamp instants: a small pool, so equal stamps across rows are frequent; the
# negative ones are "client clock behind the server" for every row
STAMPS = [-2 * SECOND, -1, 0, SECOND // 2, SECOND, SECOND + 1, 3 * SECOND]
# created_at offsets: a small pool, so equal created_at is frequent
CREATED = [0, 1, SECOND // 2, SECOND, 2 * SECOND, 3 * SECOND]
GARBAGE_META = [
    5,
    1.5,
    [1, 2],
    None,
    True,
    {"actor": "x"},
    {"at": 7},
    "yesterday",
    {"at": "not a time"},
    "2024-13-01T00:00:00Z",
    "",
]


@st.composite
def stamp_texts(draw: st.DrawFn) -> str:
    us = BASE_US + draw(st.sampled_from(STAMPS))
    label = draw(st.sampled_from(list(OFFSETS)))
    digits = draw(st.integers(0, 9))
    sep = draw(st.sampled_from(["T", "T", " "]))
    return format_stamp(us, label, digits, sep)


@st.composite
def meta_values(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["plain", "object", "garbage"]))
    if shape == "plain":
        return draw(stamp_texts())
    if shape == "object":
        return {"at": draw(stamp_texts()), "actor": {"kind": "user"}, "origin": "user"}
    return draw(st.sampled_from(GARBAGE_META))


@st.composite
def histories(draw: st.DrawFn, unique_created: bool = False) -> list[Change]:
    """Rows of 1-3 records. Values embed the row number so a wrong winner shows."""
    changes: list[Change] = []
    n = draw(st.integers(0, 1000))  # row numbers (ids) start anywhere
    for r in range(draw(st.integers(1, 3))):
        count = draw(st.integers(1, 6))
        if unique_created:
            pool = [i * SECOND // 4 for i in range(16)]
            offsets = draw(
                st.lists(st.sampled_from(pool), min_size=count, max_size=count, unique=True)
            )
        else:
            offsets = draw(st.lists(st.sampled_from(CREATED), min_size=count, max_size=count))
        for i, offset in enumerate(sorted(offsets)):
            if i == 0:
                op = draw(st.sampled_from(["insert"] * 6 + ["update", "delete"]))
            else:
                op = draw(st.sampled_from(["update"] * 8 + ["insert", "delete"]))
            names = draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True))
            if op == "delete" and draw(st.booleans()):
                names = []
            data: dict[str, Any] = {}
            meta: dict[str, Any] = {}
            for name in names:
                kind = draw(st.integers(0, 3))
                data[name] = [f"{name}-{n}", {"n": n, "l": [n, name]}, n, None][kind]
                if draw(st.integers(0, 3)):  # a stamp most of the time
                    meta[name] = draw(meta_values())
            if draw(st.integers(0, 5)) == 0:  # a stamp of a field the row does not write
                meta["other"] = draw(meta_values())
            changes.append(change(n, op, data, meta, BASE_US + offset, record_id=f"rec-{r}"))
            n += 1
    return changes


def by_record(changes: list[Change]) -> dict[str, list[Change]]:
    grouped: dict[str, list[Change]] = defaultdict(list)
    for c in changes:
        grouped[c.record_id].append(c)
    return grouped


# --------------------------------------------------------------------------- oracle


def us_of(c: Change) -> int:
    return (c.created_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def field_stamp(c: Change, name: str) -> int:
    stamp = oracle_stamp(c.field_meta.get(name))
    return us_of(c) if stamp is None else stamp


def upstream_fold(record_id: str, rows: list[Change]) -> dict[str, Any] | None:
    """The upstream semantics, written plainly: rows in created_at order (stable), the
    first creates {id, ...data}, later fields win when stamp >= current, delete is final."""
    record: dict[str, Any] | None = None
    stamps: dict[str, int] = {}
    deleted = False
    for row in sorted(rows, key=us_of):
        if row.op == "delete":
            deleted = True
            continue
        if record is None:
            record = {"id": record_id}
        for name, value in row.data.items():
            stamp = field_stamp(row, name)
            if name not in stamps or stamp >= stamps[name]:
                stamps[name] = stamp
                record[name] = value
    return None if deleted else record


def top_ties(rows: list[Change]) -> dict[str, list[Change]]:
    """Fields whose greatest (stamp, created_at) is shared by more than one row."""
    best: dict[str, tuple[tuple[int, int], list[Change]]] = {}
    for row in rows:
        if row.op == "delete":
            continue
        for name in row.data:
            key = (field_stamp(row, name), us_of(row))
            if name not in best or key > best[name][0]:
                best[name] = (key, [row])
            elif key == best[name][0]:
                best[name][1].append(row)
    return {name: tied for name, (_, tied) in best.items() if len(tied) > 1}


# --------------------------------------------------------------------------- properties

FAST = settings(max_examples=200)  # deadline and health checks: the profile in conftest


@FAST
@given(history=histories(), data=st.data())
def test_order_independence(history: list[Change], data: st.DataObject) -> None:
    """M1: any permutation, duplicates, batching (state stored between batches) converge."""
    reference = {rid: fold(rows) for rid, rows in by_record(history).items()}

    dups = data.draw(st.lists(st.sampled_from(history), max_size=len(history)))
    arrival = data.draw(st.permutations(history + dups))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(arrival)), max_size=4)))
    stored: dict[str, bytes] = {}
    for lo, hi in zip([0, *cuts], [*cuts, len(arrival)], strict=True):
        states: dict[str, RecordState] = {}
        for c in arrival[lo:hi]:
            if c.record_id not in states:
                old = stored.get(c.record_id)
                states[c.record_id] = RecordState() if old is None else decode_state(old)
            apply_change(states[c.record_id], c)
        for rid, state in states.items():
            stored[rid] = encode_state(state)

    assert stored.keys() == reference.keys()
    for rid, (ref_state, _) in reference.items():
        got = decode_state(stored[rid])
        assert got == ref_state
        assert stored[rid] == encode_state(ref_state)  # byte-identical
        assert materialize(rid, got) == materialize(rid, ref_state)

    # the bad-stamp count is a property of the set of rows, too
    for rid, rows in by_record(history).items():
        assert fold(data.draw(st.permutations(rows)))[1] == reference[rid][1]


@FAST
@given(history=histories(), data=st.data())
def test_matches_upstream_fold(history: list[Change], data: st.DataObject) -> None:
    """Same record as the upstream fold, except where (stamp, created_at) tie exactly:
    there upstream's winner depends on arrival order and ours is the greatest change id."""
    for rid, rows in by_record(history).items():
        shuffled = data.draw(st.permutations(rows))
        got = materialize(rid, fold(shuffled)[0])
        expected = upstream_fold(rid, shuffled)
        ties = top_ties(rows)
        if not ties:
            assert got == expected
            continue
        if expected is None:
            assert got is None
            continue
        assert got is not None
        assert got.keys() == expected.keys()
        for name in got:
            if name in ties:
                winner = max(ties[name], key=lambda c: c.id)
                assert got[name] == winner.data[name]
                assert expected[name] in [c.data[name] for c in ties[name]]
            else:
                assert got[name] == expected[name]


@FAST
@given(history=histories(unique_created=True), data=st.data())
def test_matches_upstream_fold_without_ties(history: list[Change], data: st.DataObject) -> None:
    """With distinct created_at per record there are no exact ties: equal records."""
    for rid, rows in by_record(history).items():
        assert not top_ties(rows)
        shuffled = data.draw(st.permutations(rows))
        assert materialize(rid, fold(shuffled)[0]) == upstream_fold(rid, rows)


@FAST
@given(text=stamp_texts())
def test_parse_stamp_matches_oracle(text: str) -> None:
    assert parse_stamp(text) == oracle_stamp(text)
    assert parse_stamp({"at": text, "actor": None}) == oracle_stamp(text)


# --------------------------------------------------------------------------- units


def test_delete_first_then_insert_stays_deleted() -> None:
    delete = change(1, "delete", created_us=BASE_US + SECOND)
    insert = change(2, "insert", {"title": "x"}, created_us=BASE_US + 2 * SECOND)
    for order in ([delete, insert], [insert, delete]):
        state, _ = fold(order)
        assert state.deleted
        assert materialize("m1", state) is None
        assert state.last_applied_us == BASE_US + 2 * SECOND


def test_last_applied_includes_deletes() -> None:
    insert = change(1, "insert", {"title": "x"}, created_us=BASE_US)
    delete = change(2, "delete", created_us=BASE_US + 5 * SECOND)
    state, _ = fold([delete, insert])
    assert state.last_applied_us == BASE_US + 5 * SECOND


def test_delete_data_is_ignored() -> None:
    state, _ = fold([change(1, "delete", {"title": "x"}, {"title": "2030-01-01T00:00:00Z"})])
    assert state.fields == {}
    assert state.deleted


def test_z_and_plus_zero_are_the_same_instant() -> None:
    z = parse_stamp("2024-05-01T12:00:00Z")
    assert z is not None
    assert parse_stamp("2024-05-01T12:00:00+00:00") == z
    assert parse_stamp("2024-05-01T14:00:00+02:00") == z
    assert parse_stamp("2024-05-01T06:30:00-05:30") == z
    assert parse_stamp("2024-05-01 12:00:00Z") == z
    assert parse_stamp("2024-05-01T12:00:00") == z  # naive is read as UTC
    assert parse_stamp("2024-05-01T12:00:00.000Z") == z
    assert parse_stamp({"at": "2024-05-01T12:00:00+00:00", "actor": {}}) == z
    assert z == BASE_US


def test_fraction_digits() -> None:
    half = BASE_US + SECOND // 2
    assert parse_stamp("2024-05-01T12:00:00.5Z") == half
    assert parse_stamp("2024-05-01T12:00:00.500Z") == half
    assert parse_stamp("2024-05-01T12:00:00.500000Z") == half
    assert parse_stamp("2024-05-01T12:00:00.500000000+00:00") == half
    assert parse_stamp("2024-05-01T12:00:00.1234567Z") == BASE_US + 123456  # truncated
    assert parse_stamp("2024-05-01T12:00:00.123456999Z") == BASE_US + 123456
    assert parse_stamp("2024-05-01T12:00:00.000001Z") == BASE_US + 1
    assert parse_stamp(" 2024-05-01T12:00:00z ") == BASE_US


def test_equal_instants_in_different_spellings_tie_on_stamp() -> None:
    # Same instant, written two ways: the stamp ties, so created_at decides.
    a = change(
        1,
        data={"title": "a"},
        meta={"title": "2024-05-01T12:00:00.5Z"},
        created_us=BASE_US + 2 * SECOND,
    )
    b = change(
        2,
        data={"title": "b"},
        meta={"title": "2024-05-01T14:00:00.500000+02:00"},
        created_us=BASE_US + SECOND,
    )
    for order in ([a, b], [b, a]):
        state, _ = fold(order)
        assert state.fields["title"].value == "a"
        assert state.fields["title"].stamp == BASE_US + SECOND // 2


def test_instants_not_strings_decide() -> None:
    # As strings "...00Z" > "...00.000001Z" ('Z' sorts after '.'); as instants it is less.
    a = change(1, data={"title": "a"}, meta={"title": "2024-05-01T12:00:00Z"})
    b = change(2, data={"title": "b"}, meta={"title": "2024-05-01T12:00:00.000001Z"})
    for order in ([a, b], [b, a]):
        assert materialize("m1", fold(order)[0])["title"] == "b"


def test_bad_stamps_counted_and_fall_back_to_created_at() -> None:
    meta = {
        "a": "yesterday",  # bad
        "b": {"at": "nope"},  # bad
        "c": 5,  # no stamp
        "d": {"actor": "x"},  # no stamp
        "e": {"at": 7},  # no stamp
        "f": None,  # no stamp
        "zz": "garbage",  # not a field of this row: not looked at
    }
    data = {k: k for k in "abcdefg"}  # g: missing stamp
    state = RecordState()
    assert apply_change(state, change(1, data=data, meta=meta, created_us=BASE_US + 7)) == 2
    assert {c.stamp for c in state.fields.values()} == {BASE_US + 7}
    assert fold([change(1, data=data, meta=meta)] * 3)[1] == 6


def test_dict_shaped_stamp() -> None:
    later_row = change(
        1,
        data={"state": "paused"},
        created_us=BASE_US + 10 * SECOND,
        meta={"state": {"at": "2024-05-01T12:00:01Z", "actor": {}}},
    )
    earlier_row = change(
        2,
        data={"state": "active"},
        created_us=BASE_US,
        meta={"state": {"at": "2024-05-01T12:00:02Z", "origin": "user"}},
    )
    state, bad = fold([later_row, earlier_row])
    assert bad == 0
    assert state.fields["state"] == Cell(BASE_US + 2 * SECOND, BASE_US, uid(2), "active")


def test_client_clock_behind_loses_even_when_created_later() -> None:
    # Same as upstream: the stamp, not created_at, decides first.
    first = change(1, "insert", {"title": "server"}, created_us=BASE_US)
    late = change(
        2,
        data={"title": "client"},
        meta={"title": "2024-05-01T11:59:00Z"},
        created_us=BASE_US + SECOND,
    )
    for order in ([first, late], [late, first]):
        record = materialize("m1", fold(order)[0])
        assert record == {"id": "m1", "title": "server"}
        assert record == upstream_fold("m1", order)


def test_exact_tie_is_broken_by_change_id() -> None:
    # Upstream: the later of the two in arrival order. Ours: the greater change id.
    a = change(1, data={"title": "a"}, meta={"title": "2024-05-01T12:00:00Z"})
    b = change(2, data={"title": "b"}, meta={"title": "2024-05-01T12:00:00+00:00"})
    winner = max([a, b], key=lambda c: c.id).data["title"]
    for order in ([a, b], [b, a]):
        assert materialize("m1", fold(order)[0])["title"] == winner
    assert {upstream_fold("m1", [a, b])["title"], upstream_fold("m1", [b, a])["title"]} == {
        "a",
        "b",
    }


def test_duplicates_are_no_ops() -> None:
    c = change(1, "insert", {"title": "x"}, {"title": "2024-05-01T12:00:00Z"})
    state, _ = fold([c])
    before = encode_state(state)
    apply_change(state, c)
    assert encode_state(state) == before


def test_change_id_is_lower_cased() -> None:
    c = change(1, data={"title": "x"})
    upper = Change(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "id": c.id.upper()})
    assert fold([upper])[0] == fold([c])[0]
    assert fold([upper])[0].fields["title"].change_id == c.id


def test_materialize() -> None:
    assert materialize("m1", RecordState()) is None  # nothing applied yet
    state, _ = fold([change(1, "insert", {"title": "x", "id": "other"})])
    assert materialize("m1", state) == {"id": "other", "title": "x"}  # data wins
    state, _ = fold([change(1, "update", {})])
    assert materialize("m1", state) == {"id": "m1"}


def test_agent_visible() -> None:
    assert not agent_visible(None)
    assert agent_visible({"id": "a"})
    assert agent_visible({"id": "a", "deletedAt": None})
    assert agent_visible({"id": "a", "deletedAt": ""})
    assert not agent_visible({"id": "a", "deletedAt": "2024-05-01T12:00:00Z"})


def test_encode_decode_round_trip() -> None:
    rows = [
        change(
            1,
            "insert",
            {"title": "x", "plan": {"b": [1, 2.5, None], "a": True}},
            {"title": {"at": "2024-05-01T12:00:00.5Z"}},
        ),
        change(2, "update", {"state": "active"}, created_us=BASE_US + SECOND),
    ]
    state, _ = fold(rows)
    buf = encode_state(state)
    assert decode_state(buf) == state
    assert encode_state(decode_state(buf)) == buf
    # compact: a cell is an array [stamp, created, change_id, value]
    raw = msgspec.msgpack.decode(buf)
    assert raw["fields"]["state"] == [BASE_US + SECOND, BASE_US + SECOND, uid(2), "active"]
    # deterministic: the same state built in another order encodes to the same bytes
    assert encode_state(fold(rows[::-1])[0]) == buf
    deleted, _ = fold([*rows, change(3, "delete", created_us=BASE_US + 9 * SECOND)])
    assert decode_state(encode_state(deleted)) == deleted
    assert decode_state(encode_state(RecordState())) == RecordState()


def test_naive_created_at_is_read_as_utc() -> None:
    aware = change(1, data={"t": 1})
    naive = Change(
        **{
            **{f: getattr(aware, f) for f in aware.__struct_fields__},
            "created_at": aware.created_at.replace(tzinfo=None),
        }
    )
    assert fold([naive])[0] == fold([aware])[0]


def test_other_offsets_of_created_at() -> None:
    aware = change(1, data={"t": 1})
    shifted = Change(
        **{
            **{f: getattr(aware, f) for f in aware.__struct_fields__},
            "created_at": aware.created_at.astimezone(timezone(timedelta(hours=-7))),
        }
    )
    assert fold([shifted])[0] == fold([aware])[0]
