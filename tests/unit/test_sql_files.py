"""The layout of schema/: what each query file is can be told from its name."""

from __future__ import annotations

import re
from pathlib import Path

from consumer import locks
from consumer.sql import load, schema_dir

QUERIES = schema_dir() / "queries"
PLACEHOLDER = re.compile(r"(?<![{'])\{[a-z_]+\}(?!')")  # {ident}, not jsonb '{}' literals
ROOT = Path(__file__).resolve().parents[2]


def _queries() -> list[Path]:
    return sorted(QUERIES.rglob("*.sql"))


def test_queries_sit_in_group_folders() -> None:
    files = _queries()
    assert files
    assert [p for p in files if p.parent == QUERIES] == []


def test_a_file_is_a_template_exactly_when_it_has_identifier_placeholders() -> None:
    for path in _queries():
        is_template = path.name.endswith(".tmpl.sql")
        assert bool(PLACEHOLDER.search(path.read_text())) == is_template, path.name


def test_every_query_the_code_loads_exists() -> None:
    called = set()
    for folder in ("consumer", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            called |= set(re.findall(r"""load\(["']([a-z_/.]+)["']\)""", path.read_text()))
    assert called
    for name in sorted(called):
        assert load(name)  # raises if the file is missing


def test_lock_keys_are_parameters_not_literals() -> None:
    keys = {str(k) for k in (locks.MIGRATE, locks.LEADER, locks.REPLAY)}
    for path in [*_queries(), *(schema_dir() / "migrations").glob("*.sql")]:
        text = path.read_text()
        assert not any(k in text for k in keys), path.name
