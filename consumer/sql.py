"""SQL lives in .sql files under schema/; this loads them by name."""

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
    """Text of schema/queries/<name>.sql (or schema/<name>.sql when given with a slash)."""
    base = schema_dir()
    path = base / f"{name}.sql" if "/" in name else base / "queries" / f"{name}.sql"
    return path.read_text()
