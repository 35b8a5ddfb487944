"""consumer.merge: invariant M1 (order independence) and parity with upstream's fold.

Pure tests, no database. The oracle (tests/upstream_oracle.py) is upstream's fold written
plainly, with our deliberate differences as switches. Histories are small, with equal
stamps and equal created_at frequent on purpose, first rows without stamps, meta-only
keys, deletes and updates that sort before the insert.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.merge import (
    Cell,
    FirstRow,
    RecordState,
    agent_visible,
    apply_change,
    decode_state,
    encode_state,
    field_clock,
    fold,
    is_legacy,
    js_truthy,
    materialize,
    parse_stamp,
)
from consumer.model import AGENTS_TABLE, MISSIONS_TABLE, Change
from tests import upstream_oracle as oracle
from tests.upstream_oracle import OURS, UPSTREAM, Row, Rules

BASE = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
BASE_US = (BASE - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
SECOND = 1_000_000
MS = 1000
BIG = 2**53 + 1  # not a double


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
    table: str = MISSIONS_TABLE,
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


def us_of(c: Change) -> int:
    return (c.created_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def row_of(c: Change) -> Row:
    return Row(c.id, c.record_id, c.op, c.data, c.field_meta, us_of(c))


def ours(c_list: list[Change]) -> dict[str, Any] | None:
    """Our record for one record's rows, as the projection stores it (agents: deletedAt)."""
    record = materialize(c_list[0].record_id, fold(c_list)[0])
    if c_list[0].kind == "agent" and not agent_visible(record):
        return None
    return record


def theirs(rows: list[Change], rules: Rules = UPSTREAM) -> dict[str, Any] | None:
    """The oracle's record: each row once, in the order given (the database's)."""
    unique = list({c.id: c for c in rows}.values())
    return oracle.fold(rows[0].kind, rows[0].record_id, [row_of(c) for c in unique], rules)[0]


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


# --------------------------------------------------------------------------- strategies

FIELDS = ["title", "state", "nextRunAt", "deletedAt", "id", "maxTokensPerDay"]
# absolute stamp instants: a small pool, so equal stamps across rows are frequent; the
# negative ones are "client clock behind the server" for every row
STAMPS = [-2 * SECOND, -1, 0, SECOND // 2, SECOND, SECOND + 1, 3 * SECOND]
CLEAN_STAMPS = [-2 * SECOND, -MS, 0, 500 * MS, SECOND, SECOND + MS, 3 * SECOND]
# created_at offsets: a small pool, so equal created_at (and equal milliseconds) is frequent
CREATED = [0, 1, 999, 500 * MS, SECOND, SECOND + 1, 2 * SECOND, 3 * SECOND]
GARBAGE_META = [5, 1.5, [1, 2], None, True, {"actor": "x"}, {"at": 7}, ""]
BAD_STAMPS = ["yesterday", {"at": "not a time"}, "2024-13-01T00:00:00Z", "not-a-date"]
DELETED_AT = [None, "", False, 0, 0.0, [], {}, "2026-01-01T00:00:00Z", True, 1]


@st.composite
def stamp_texts(draw: st.DrawFn, clean: bool = False) -> str:
    if clean:  # the shape upstream's clients write: toISOString()
        return format_stamp(BASE_US + draw(st.sampled_from(CLEAN_STAMPS)), "Z", 3, "T")
    us = BASE_US + draw(st.sampled_from(STAMPS))
    label = draw(st.sampled_from(list(OFFSETS)))
    digits = draw(st.integers(0, 9))
    sep = draw(st.sampled_from(["T", "T", " "]))
    return format_stamp(us, label, digits, sep)


@st.composite
def meta_values(draw: st.DrawFn, clean: bool = False) -> Any:
    shape = draw(st.sampled_from(["plain", "plain", "object", "object", "garbage", "bad"]))
    if shape == "plain":
        return draw(stamp_texts(clean))
    if shape == "object":
        return {"at": draw(stamp_texts(clean)), "actor": {"kind": "user"}, "origin": "user"}
    if shape == "bad" and not clean:
        return draw(st.sampled_from(BAD_STAMPS))
    return draw(st.sampled_from(GARBAGE_META))


def value_for(draw: st.DrawFn, name: str, n: int, clean: bool) -> Any:
    if name == "deletedAt":
        return draw(st.sampled_from(DELETED_AT))
    kind = draw(st.integers(0, 4))
    if kind == 4:
        return draw(st.sampled_from([n, -n, 1.5] if clean else [BIG, -BIG, 2**63 - 1, 1.5]))
    return [f"{name}-{n}", {"n": n, "l": [n, name]}, n, None][kind]


@st.composite
def histories(draw: st.DrawFn, clean: bool = False) -> list[Change]:
    """Rows of 1-3 records (missions and agents). Values embed the row number so a wrong
    winner shows. ``clean``: none of the documented differences can show (distinct
    created_at per record in whole milliseconds, ``Z`` stamps with 3 digits, no bad stamps,
    no integers past 2^53)."""
    changes: list[Change] = []
    n = draw(st.integers(0, 1000))  # row numbers (ids) start anywhere
    for r in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from([MISSIONS_TABLE, AGENTS_TABLE]))
        count = draw(st.integers(1, 6))
        if clean:
            pool = [i * 250 * MS for i in range(16)]
            offsets = draw(
                st.lists(st.sampled_from(pool), min_size=count, max_size=count, unique=True)
            )
        else:
            offsets = draw(st.lists(st.sampled_from(CREATED), min_size=count, max_size=count))
        for offset in offsets:  # any op at any time: updates before the insert too
            op = draw(st.sampled_from(["insert"] * 3 + ["update"] * 6 + ["delete"]))
            names = draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True))
            if op == "delete" and draw(st.booleans()):
                names = []
            data: dict[str, Any] = {}
            meta: dict[str, Any] = {}
            for name in names:
                data[name] = value_for(draw, name, n, clean)
                if draw(st.integers(0, 2)):  # unstamped fields are frequent
                    meta[name] = draw(meta_values(clean))
            for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)):
                if name not in data:  # a meta-only key: a stamp without a value
                    meta[name] = draw(meta_values(clean))
            changes.append(
                change(n, op, data, meta, BASE_US + offset, record_id=f"rec-{r}", table=table)
            )
            n += 1
    return changes


def by_record(changes: list[Change]) -> dict[str, list[Change]]:
    grouped: dict[str, list[Change]] = defaultdict(list)
    for c in changes:
        grouped[c.record_id].append(c)
    return grouped


def arrive(history: list[Change], data: st.DataObject) -> dict[str, bytes]:
    """Apply `history` in a random order with duplicates, in random batches, storing the
    encoded state between batches as the projection does; -> stored state per record."""
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
    return stored


def stored_record(rid: str, rows: list[Change], buf: bytes) -> dict[str, Any] | None:
    record = materialize(rid, decode_state(buf))
    if rows[0].kind == "agent" and not agent_visible(record):
        return None
    return record


# --------------------------------------------------------------------------- properties

FAST = settings(max_examples=150)  # deadline and health checks: the profile in conftest


@FAST
@given(history=histories(), data=st.data())
def test_order_independence(history: list[Change], data: st.DataObject) -> None:
    """M1: any permutation, duplicates, batching (state stored between batches) converge,
    byte for byte."""
    reference = {rid: fold(rows) for rid, rows in by_record(history).items()}
    stored = arrive(history, data)
    assert stored.keys() == reference.keys()
    for rid, (ref_state, _) in reference.items():
        got = decode_state(stored[rid])
        assert got == ref_state
        assert stored[rid] == encode_state(ref_state)  # byte-identical
    # the bad-stamp count is a property of the set of rows, too
    for rid, rows in by_record(history).items():
        assert fold(data.draw(st.permutations(rows)))[1] == reference[rid][1]


@FAST
@given(history=histories(clean=True), data=st.data())
def test_equals_upstream_where_no_difference_applies(
    history: list[Change], data: st.DataObject
) -> None:
    """No exact ties, ``Z`` stamps with 3 digits, no bad stamps, no integers past 2^53: our
    merge, in any arrival order with duplicates and batches, gives upstream's record."""
    stored = arrive(history, data)
    for rid, rows in by_record(history).items():
        assert stored_record(rid, rows, stored[rid]) == theirs(rows, UPSTREAM)


@FAST
@given(history=histories(), data=st.data())
def test_every_difference_is_a_documented_one(
    history: list[Change], data: st.DataObject
) -> None:
    """On any input, our merge equals upstream's fold with our documented differences
    switched on (and the oracle with them on still equals upstream on clean inputs, above
    and in test_oracle_rules_are_upstream_on_clean_inputs): nothing else differs."""
    stored = arrive(history, data)
    for rid, rows in by_record(history).items():
        database_order = data.draw(st.permutations(rows))
        assert stored_record(rid, rows, stored[rid]) == theirs(database_order, OURS)


@FAST
@given(history=histories(clean=True), data=st.data())
def test_oracle_rules_are_upstream_on_clean_inputs(
    history: list[Change], data: st.DataObject
) -> None:
    """Each documented difference, alone or together, changes nothing on clean inputs: the
    switches model differences that only show where the README says they do."""
    flags = data.draw(st.fixed_dictionaries({k: st.booleans() for k in Rules.__annotations__}))
    if flags["instants"]:
        flags["bad_stamps_as_none"] = True
    for rows in by_record(history).values():
        order = data.draw(st.permutations(rows))
        assert theirs(order, Rules(**flags)) == theirs(order, UPSTREAM)


@FAST
@given(text=stamp_texts())
def test_parse_stamp_matches_oracle(text: str) -> None:
    assert parse_stamp(text) == oracle.instant_us(text)
    assert parse_stamp({"at": text, "actor": None}) == oracle.instant_us(text)


# --------------------------------------------------------------------------- upstream's rules


def test_unstamped_field_of_the_first_row_has_no_clock() -> None:
    # A legacy insert without stamps, then an edit from a device whose clock runs behind:
    # the edit wins (upstream), although its stamp is earlier than the insert's created_at.
    insert = change(1, "insert", {"title": "old", "state": "active"}, created_us=BASE_US)
    edit = change(
        2,
        data={"title": "edited"},
        meta={"title": "2024-05-01T11:59:58.000Z"},
        created_us=BASE_US + SECOND,
    )
    for order in ([insert, edit], [edit, insert]):
        assert ours(order) == {"id": "m1", "title": "edited", "state": "active"}
        assert ours(order) == theirs([insert, edit])


def test_stamped_field_of_the_first_row_keeps_its_clock() -> None:
    insert = change(
        1, "insert", {"title": "old"}, {"title": "2024-05-01T12:00:00.000Z"}, created_us=BASE_US
    )
    edit = change(
        2, data={"title": "x"}, meta={"title": "2024-05-01T11:59:58.000Z"},
        created_us=BASE_US + SECOND,
    )
    for order in ([insert, edit], [edit, insert]):
        assert ours(order) == {"id": "m1", "title": "old"} == theirs([insert, edit])


def test_meta_only_key_of_the_first_row_sets_a_clock() -> None:
    insert = change(
        1, "insert", {"state": "active"}, {"title": "2024-05-01T12:00:05.000Z"}, BASE_US
    )
    early = change(
        2, data={"title": "early"}, meta={"title": "2024-05-01T12:00:04.000Z"},
        created_us=BASE_US + SECOND,
    )
    late = change(
        3, data={"title": "late"}, meta={"title": "2024-05-01T12:00:05.000Z"},
        created_us=BASE_US + 2 * SECOND,
    )
    assert ours([insert, early]) == {"id": "m1", "state": "active"} == theirs([insert, early])
    for order in ([insert, early, late], [late, early, insert]):
        assert ours(order) == {"id": "m1", "state": "active", "title": "late"}
        assert ours(order) == theirs([insert, early, late])


def test_meta_only_key_of_a_later_row_does_nothing() -> None:
    insert = change(1, "insert", {"title": "a"}, created_us=BASE_US)
    later = change(2, data={}, meta={"title": "2030-01-01T00:00:00.000Z"}, created_us=BASE_US + 1)
    edit = change(
        3, data={"title": "b"}, meta={"title": "2000-01-01T00:00:00.000Z"},
        created_us=BASE_US + 2,
    )
    expected = {"id": "m1", "title": "b"}
    assert ours([edit, later, insert]) == expected == theirs([insert, later, edit])


def test_row_sorting_before_the_first_row_demotes_it() -> None:
    # The update arrives first and is the first row until the insert, created earlier,
    # arrives; then the update is an ordinary later row and its meta-only key does nothing.
    insert = change(1, "insert", {"title": "a", "state": "s"}, created_us=BASE_US)
    update = change(
        2, data={"title": "b"},
        meta={"title": "2000-01-01T00:00:00.000Z", "state": "2030-01-01T00:00:00.000Z"},
        created_us=BASE_US + SECOND,
    )
    state = RecordState()
    apply_change(state, update)
    assert state.first is not None and state.first.change_id == uid(2)
    assert materialize("m1", state) == {"id": "m1", "title": "b"}
    apply_change(state, insert)
    assert state.first is not None and state.first.change_id == uid(1)
    stamp = parse_stamp("2000-01-01T00:00:00.000Z")
    assert stamp is not None
    assert state.fields == {"title": Cell(stamp, BASE_US + SECOND, uid(2), "b")}
    assert materialize("m1", state) == {"id": "m1", "title": "b", "state": "s"}
    assert materialize("m1", state) == theirs([insert, update])
    assert state == fold([insert, update])[0]


def test_first_row_data_id_wins_over_record_id() -> None:
    rows = [change(1, "update", {"id": "other", "title": "x"})]
    assert ours(rows) == {"id": "other", "title": "x"} == theirs(rows)


def test_agent_deleted_at_is_javascript_truthiness() -> None:
    for value in DELETED_AT:
        rows = [change(1, "insert", {"name": "a", "deletedAt": value}, table=AGENTS_TABLE)]
        assert (ours(rows) is None) == oracle.js_truthy(value) == js_truthy(value), value
        assert ours(rows) == theirs(rows)
    assert js_truthy([]) and js_truthy({}) and js_truthy("0") and js_truthy(-1)
    assert not any(js_truthy(v) for v in (None, "", False, 0, 0.0, -0.0))


def test_agent_deleted_then_restored() -> None:
    rows = [
        change(1, "insert", {"name": "a"}, table=AGENTS_TABLE),
        change(2, data={"deletedAt": {}}, created_us=BASE_US + 1, table=AGENTS_TABLE),
        change(3, data={"deletedAt": None}, created_us=BASE_US + 2, table=AGENTS_TABLE),
    ]
    assert ours(rows[:2]) is None is theirs(rows[:2])
    assert ours(rows) == {"id": "m1", "name": "a", "deletedAt": None} == theirs(rows)


# --------------------------------------------------------------------------- our differences


def test_difference_instants_not_text() -> None:
    # As text "...00Z" > "...00.000001Z" ('Z' sorts after '.'); as instants it is less.
    a = change(1, data={"title": "a"}, meta={"title": "2024-05-01T12:00:00Z"})
    b = change(2, data={"title": "b"}, meta={"title": "2024-05-01T12:00:00.000001Z"})
    first = change(0, "insert", {}, created_us=BASE_US - SECOND)
    for order in ([first, a, b], [b, a, first]):
        assert ours(order)["title"] == "b"  # type: ignore[index]
    assert theirs([first, a, b], UPSTREAM)["title"] == "a"  # type: ignore[index]
    assert theirs([first, a, b], OURS)["title"] == "b"  # type: ignore[index]
    # microsecond created_at: the same millisecond for upstream, not for us
    x = change(3, data={"title": "x"}, created_us=BASE_US + 2)
    y = change(4, data={"title": "y"}, meta={"title": "2024-05-01T12:00:00.000Z"},
               created_us=BASE_US + 5)
    assert ours([first, x, y])["title"] == "x"  # type: ignore[index]
    assert theirs([first, x, y], UPSTREAM)["title"] == "y"  # type: ignore[index]


def test_difference_exact_ties_go_to_the_greater_change_id() -> None:
    a = change(1, data={"title": "a"}, meta={"title": "2024-05-01T12:00:00.000Z"})
    b = change(2, data={"title": "b"}, meta={"title": "2024-05-01T12:00:00.000Z"})
    first = change(0, "insert", {}, created_us=BASE_US - SECOND)
    winner = max([a, b], key=lambda c: c.id).data["title"]
    for order in ([first, a, b], [b, a, first]):
        assert ours(order)["title"] == winner  # type: ignore[index]
    # upstream: whichever the database returned last
    assert {theirs([first, a, b])["title"], theirs([first, b, a])["title"]} == {"a", "b"}  # type: ignore[index]
    # equal created_at also decides which row is first: the smaller change id
    p = change(5, "insert", {"title": "p"}, created_us=BASE_US)
    q = change(6, "insert", {"title": "q"}, created_us=BASE_US)
    low, high = sorted([p, q], key=lambda c: c.id)
    assert ours([p, q]) == ours([q, p]) == {"id": "m1", "title": high.data["title"]}
    assert ours([p, q]) == theirs([low, high], UPSTREAM) == theirs([q, p], OURS)


def test_difference_unparseable_stamp_counts_as_none() -> None:
    first = change(0, "insert", {"title": "first"}, created_us=BASE_US)
    bad = change(1, data={"title": "bad"}, meta={"title": "not-a-date"},
                 created_us=BASE_US + SECOND)
    good = change(2, data={"title": "good"}, meta={"title": "2024-05-01T12:00:05.000Z"},
                  created_us=BASE_US + 2 * SECOND)
    assert ours([good, bad, first])["title"] == "good"  # type: ignore[index]
    assert theirs([first, bad, good], UPSTREAM)["title"] == "bad"  # "n" > "2": wins forever
    assert fold([bad])[1] == 1  # counted for mana_ai_bad_stamps_total


def test_difference_integers_keep_their_value() -> None:
    rows = [change(1, "insert", {"maxTokensPerDay": BIG})]
    assert ours(rows) == {"id": "m1", "maxTokensPerDay": BIG}
    assert theirs(rows, UPSTREAM) != {"id": "m1", "maxTokensPerDay": BIG}  # a double
    assert theirs(rows, OURS) == ours(rows)


def test_difference_clocks_beside_the_record() -> None:
    rows = [change(1, "insert", {"title": "a"}, {"title": "2024-05-01T12:00:00.000Z"})]
    record = ours(rows)
    assert record == {"id": "m1", "title": "a"}  # no __fieldMeta key in the record
    _, fm = oracle.fold("mission", "m1", [row_of(rows[0])])
    assert fm == {"title": "2024-05-01T12:00:00.000Z"}  # upstream writes it into the record
    state = fold(rows)[0]
    assert state.first is not None and state.first.clocks == {"title": BASE_US}


# --------------------------------------------------------------------------- old states


def test_state_of_the_old_rule_still_decodes_and_merges() -> None:
    """A state stored before the first row was kept apart: three keys, the first row's
    fields stamped with its created_at. It decodes, materializes as before and keeps the
    old rule until a replay rebuilds it."""
    old = msgspec.msgpack.encode(
        {
            "fields": {"title": [BASE_US, BASE_US, uid(1), "old"]},
            "deleted": False,
            "last_applied_us": BASE_US,
        }
    )
    state = decode_state(old)
    assert state.first is None and is_legacy(state)
    assert materialize("m1", state) == {"id": "m1", "title": "old"}
    # a device behind the server: the old rule keeps "old"; a replay (fresh fold) does not
    edit = change(2, data={"title": "new"}, meta={"title": "2024-05-01T11:59:59Z"},
                  created_us=BASE_US + SECOND)
    apply_change(state, edit)
    assert is_legacy(state)
    assert materialize("m1", state) == {"id": "m1", "title": "old"}
    assert not is_legacy(RecordState())
    assert not is_legacy(fold([change(1, "delete")])[0])
    assert not is_legacy(fold([change(1, "insert", {"title": "x"})])[0])
    assert not is_legacy(fold([change(1, "insert", {})])[0])


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
    state, _ = fold([change(0, "insert", created_us=BASE_US)])  # the row is a later row
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
    assert state.first == FirstRow(
        BASE_US, uid(2), {"state": "active"}, {"state": BASE_US + 2 * SECOND}
    )
    assert state.fields["state"] == Cell(BASE_US + SECOND, BASE_US + 10 * SECOND, uid(1), "paused")
    assert materialize("m1", state) == {"id": "m1", "state": "active"}


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
    first = fold([upper])[0].first
    assert first is not None and first.change_id == c.id


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
    assert agent_visible({"id": "a", "deletedAt": 0})
    assert not agent_visible({"id": "a", "deletedAt": "2024-05-01T12:00:00Z"})
    assert not agent_visible({"id": "a", "deletedAt": []})
    assert not agent_visible({"id": "a", "deletedAt": {}})


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
    # the first row: [created, change_id, data, clocks]
    assert raw["first"] == [BASE_US, uid(1), rows[0].data, {"title": BASE_US + SECOND // 2}]
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


@FAST
@given(history=histories(), data=st.data())
def test_field_clock_is_what_a_new_write_must_reach(
    history: list[Change], data: st.DataObject
) -> None:
    """A write stamped at field_clock (created later than every row) wins the field; one
    stamped a microsecond earlier loses it (when there is a clock)."""
    for rid, rows in by_record(history).items():
        state = fold(rows)[0]
        if state.deleted:
            continue
        name = data.draw(st.sampled_from(FIELDS))
        clock = field_clock(state, name)
        last = max(us_of(c) for c in rows) + SECOND
        if clock is None:  # no clock: even a write stamped long before wins
            probes = [(BASE_US - 3600 * SECOND, True)]
        else:
            probes = [(clock, True), (clock - 1, False)]
        for stamp, wins in probes:
            probe = change(9999, data={name: "probe"}, created_us=last, record_id=rid,
                           table=rows[0].table_name, meta={name: format_stamp(stamp, "Z", 6, "T")})
            record = materialize(rid, fold([*rows, probe])[0])
            assert record is not None
            assert (record.get(name) == "probe") == wins, (name, clock, stamp)
