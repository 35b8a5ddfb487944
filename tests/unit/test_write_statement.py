"""The one statement that writes a batch (snapshots/write.tmpl.sql, apply._write_query):
composed from the parts a batch needs, its tables always named in the one lock order."""

from __future__ import annotations

import itertools
import re

from consumer.apply import _PARTS, LIVE, _write_query
from consumer.replay_store import SHADOW

LOCK_ORDER = ("clocks", "due", "missions", "agents")  # replay/lock_live.tmpl.sql


def tables_named(query: str, targets=LIVE) -> list[str]:
    """The targets' tables in the order the statement first names them."""
    where = {
        kind: query.find(f'"{targets.schema}"."{getattr(targets, kind)}"') for kind in LOCK_ORDER
    }
    return sorted((k for k, at in where.items() if at >= 0), key=lambda k: where[k])


def test_every_shape_names_its_tables_in_the_lock_order_and_only_what_it_writes() -> None:
    names = [name for name, *_ in _PARTS]
    for size in range(len(names) + 1):
        for chosen in itertools.combinations(names, size):
            for targets in (LIVE, SHADOW):
                query = _write_query(targets, frozenset(chosen), False).decode()
                named = tables_named(query, targets)
                assert named == [k for k in LOCK_ORDER if k in named], (chosen, named)
                wanted = {table for name, _, table, _ in _PARTS if name in chosen and table}
                assert set(named) == wanted, (chosen, named)
                assert ("advance_checkpoint" in query) == ("moved" in chosen)
                assert ("mana_ai.quarantine" in query) == ("quarantined" in chosen)


def test_a_lone_missions_statement_has_three_writing_parts_and_arms_only_when_asked() -> None:
    query = _write_query(LIVE, frozenset({"clocks", "due", "missions", "moved"}), True).decode()
    assert "agent_snapshots" not in query
    assert len(re.findall(r"\bINSERT INTO\b", query)) == 3  # clocks, due, missions
    assert "pg_try_advisory_lock" in query and "CASE WHEN TRUE" in query
    unarmed = _write_query(LIVE, frozenset({"clocks"}), False).decode()
    assert "CASE WHEN FALSE" in unarmed


def test_only_an_arming_is_a_statement_of_its_own() -> None:
    query = _write_query(LIVE, frozenset(), True).decode()
    assert query.lstrip().startswith("SELECT") and "WITH" not in query.split("SELECT", 1)[0]
