"""The replay's pure parts, without a database: the swap's statements from catalog facts,
and the differences report of --verify."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.merge import Cell, RecordState, encode_state
from consumer.replay import (
    ReplayError,
    clock_differences,
    differences_report,
    swap_statements,
)
from consumer.replay_store import TABLES, Counts, Diff, DiffRow, Rename, TableFacts

SCHEMA = "mana_ai"


def text(statements: list) -> list[str]:
    return [s.as_string(None) for s in statements]


def facts(live: str, shadow: str, retired: str, *renames: Rename,
          carry: tuple[str, ...] = ()) -> TableFacts:
    return TableFacts(live, shadow, retired, list(carry), list(renames))


# --------------------------------------------------------------------------- swap


def test_swap_statements_of_one_table() -> None:
    got = text(swap_statements([
        facts("t", "t_shadow", "t_retired",
              Rename("constraint", "t_check", "t_check"),  # LIKE kept the name: no rename
              Rename("constraint", "t_shadow_n_check", "t_n_check"),
              Rename("index", "t_shadow_pkey", "t_pkey"),
              carry=("GRANT SELECT ON TABLE mana_ai.t_shadow TO reader",)),
    ]))
    assert got == [
        'ALTER INDEX "mana_ai"."t_pkey" RENAME TO "t_pkey_retired"',
        'ALTER TABLE "mana_ai"."t" RENAME TO "t_retired"',
        "GRANT SELECT ON TABLE mana_ai.t_shadow TO reader",
        'ALTER TABLE "mana_ai"."t_shadow" RENAME TO "t"',
        'ALTER TABLE "mana_ai"."t" RENAME CONSTRAINT "t_shadow_n_check" TO "t_n_check"',
        'ALTER INDEX "mana_ai"."t_shadow_pkey" RENAME TO "t_pkey"',
    ]


def test_a_retired_index_name_stays_within_the_63_byte_limit() -> None:
    long = "i" * 63
    (first, *_) = text(swap_statements([facts("t", "s", "r", Rename("index", "s_i", long))]))
    assert first == f'ALTER INDEX "mana_ai"."{long}" RENAME TO "{"i" * 55}_retired"'


@pytest.mark.parametrize("rename", [
    Rename("index", None, "t_pkey"), Rename("constraint", "t_shadow_x_check", None),
])
def test_a_shadow_that_does_not_match_is_refused(rename: Rename) -> None:
    with pytest.raises(ReplayError, match=r"shadow of mana_ai\.t does not match .* on one side"):
        swap_statements([facts("t", "t_shadow", "t_retired", rename)])


_STATEMENT = re.compile(
    r'ALTER (?P<what>INDEX|TABLE) "mana_ai"\."(?P<old>[^"]+)" RENAME '
    r'(?:CONSTRAINT "(?P<con>[^"]+)" )?TO "(?P<new>[^"]+)"'
)


@st.composite
def catalogs(draw: st.DrawFn) -> list[TableFacts]:
    """Facts of the four replay tables: each live index paired with a shadow one of another
    name (both unique in the schema), constraints that LIKE renamed or kept."""
    out = []
    for live, shadow, retired in TABLES:
        n_idx = draw(st.integers(0, 3))
        n_con = draw(st.integers(0, 3))
        renames = [Rename("index", f"{shadow}_idx{i}", f"{live}_i{i}") for i in range(n_idx)]
        for i in range(n_con):
            kept = draw(st.booleans())
            renames.append(Rename("constraint", f"{live}_c{i}" if kept else f"{shadow}_c{i}",
                                  f"{live}_c{i}"))
        out.append(TableFacts(live, shadow, retired, [], draw(st.permutations(renames))))
    return out


@given(catalogs())
def test_swap_renames_never_collide_and_end_with_the_live_names(tables: list[TableFacts]) -> None:
    """Run the statements on a model of the schema: relation names (tables and indexes
    share one namespace) and constraint names per table. No rename may take a name in
    use; at the end every live name is held by the shadow's object and every old live
    object sits under a retired name."""
    relations: dict[str, str] = {}  # name -> object
    constraints: dict[str, dict[str, str]] = {}  # table object -> name -> object
    for t in tables:
        relations[t.live], relations[t.shadow] = f"live:{t.live}", f"shadow:{t.live}"
        constraints[f"live:{t.live}"], constraints[f"shadow:{t.live}"] = {}, {}
        for r in t.renames:
            assert r.live_name is not None and r.shadow_name is not None
            side = {"index": relations}
            if r.kind == "index":
                side["index"][r.live_name] = f"live-index:{r.live_name}"
                side["index"][r.shadow_name] = f"shadow-index:{r.live_name}"
            else:
                constraints[f"live:{t.live}"][r.live_name] = f"live-con:{r.live_name}"
                constraints[f"shadow:{t.live}"][r.shadow_name] = f"shadow-con:{r.live_name}"
    for statement in text(swap_statements(tables)):
        m = _STATEMENT.fullmatch(statement)
        assert m, statement
        if m["con"]:
            names = constraints[relations[m["old"]]]
            assert m["new"] not in names, statement
            names[m["new"]] = names.pop(m["con"])
        else:
            assert m["new"] not in relations, statement
            relations[m["new"]] = relations.pop(m["old"])
    for t in tables:
        assert relations[t.live] == f"shadow:{t.live}"
        assert relations[t.retired] == f"live:{t.live}"
        assert t.shadow not in relations
        for r in t.renames:
            assert r.live_name is not None
            if r.kind == "index":
                assert relations[r.live_name] == f"shadow-index:{r.live_name}"
            else:
                assert constraints[f"shadow:{t.live}"][r.live_name] == f"shadow-con:{r.live_name}"


# --------------------------------------------------------------------------- report


def cell(stamp: int) -> Cell:
    return Cell(stamp, stamp, "00000000-0000-0000-0000-000000000001", stamp)


def row(what: str, status: str, **kw: object) -> DiffRow:
    base: dict = {"kind": "mission", "user_id": "u1", "record_id": "m1", "what": what,
                  "status": status, "fields": None, "live_state": None, "shadow_state": None}
    return DiffRow(**(base | kw))


def test_report_when_equal() -> None:
    assert differences_report(Diff(0, 0, []), Counts(3, 1), 1234) == [
        "replay --verify: the live snapshots equal the log's fold (3 missions, 1 agents, "
        "1,234 log rows)"
    ]
    (line,) = differences_report(Diff(0, 2, []), Counts(3, 1), 10)
    assert line.endswith("; 2 record(s) the live projection is still applying were not compared")


def test_report_names_every_kind_of_difference() -> None:
    live = encode_state(RecordState(fields={"title": cell(10), "state": cell(5)},
                                    last_applied_us=7))
    shadow = encode_state(RecordState(fields={"title": cell(11), "state": cell(5)},
                                      last_applied_us=8))
    found = Diff(5, 0, [
        row("snapshot", "differs", fields=["last_applied_at", "title"]),
        row("snapshot", "differs", record_id="m2", fields=[]),
        row("clock", "differs", record_id="m3", live_state=live, shadow_state=shadow),
        row("due", "only-replay", record_id="m4", fields=["due_at"]),
        row("snapshot", "only-live", kind="agent", user_id="u9", record_id="a1"),
    ])
    assert differences_report(found, Counts(4, 2), 99) == [
        "replay --verify: 5 record(s) differ from the log's fold (4 missions, 2 agents live)",
        "  mission u1/m1: fields last_applied_at, title",
        "  mission u1/m2: metadata",
        "  mission clock u1/m3: fields title, (last_applied_us)",
        "  mission due index u1/m4: missing from the live table",
        "  agent u9/a1: in the live table, not in the log's fold",
    ]


def test_report_says_when_more_differ_than_it_lists() -> None:
    # A record whose snapshot and clock both differ counts once.
    found = Diff(3, 0, [row("clock", "only-live"), row("snapshot", "only-live")])
    lines = differences_report(found, Counts(1, 0), 1)
    assert lines[-1] == "  ..." and len(lines) == 4
    assert differences_report(Diff(1, 0, found.rows), Counts(1, 0), 1)[-1] != "  ..."


def test_clock_differences_names_fields_and_bookkeeping() -> None:
    a = encode_state(RecordState(fields={"x": cell(1), "y": cell(2)}, deleted=False))
    b = encode_state(RecordState(fields={"x": cell(1), "z": cell(3)}, deleted=True))
    assert clock_differences(a, b) == ["y", "z", "(deleted)"]
    assert clock_differences(a, a) == []
