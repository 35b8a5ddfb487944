"""SQL lives in .sql files under schema/; this loads them by name.

schema/migrations/        versioned migrations, applied in order by `consumer migrate`
schema/queries/<group>/   one statement per file, grouped by the tables they serve
                          (journal, checkpoint, snapshots, ledger, replay, status, demo)
schema/sync_changes.sql   mana-sync's table, for tests, the demo and fresh databases

A query takes bound parameters only (%(name)s). A file named *.tmpl.sql is a template
instead: it has {placeholders} for identifiers (which tables), filled with psycopg.sql
(`sql.SQL(load("<group>/<name>.tmpl")).format(...)`); values still go as parameters.
Benchmark-only SQL lives in bench/sql/, outside the package."""

from __future__ import annotations

from functools import cache
from pathlib import Path

# Editable installs and the source tree keep schema/ beside the package; a wheel ships it
# inside the package as _schema (see pyproject's force-include).
_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "schema",
    Path(__file__).resolve().parent / "_schema",
)


def schema_dir() -> Path:
    for candidate in _CANDIDATES:
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError("schema/ directory not found beside the consumer package")


@cache
def load(name: str) -> str:
    """Text of schema/queries/<group>/<name>.sql, given as "<group>/<name>"."""
    return (schema_dir() / "queries" / f"{name}.sql").read_text()
