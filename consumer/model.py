"""Boundary types shared by the modules: what a log row looks like once read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

MISSIONS_TABLE = "aiMissions"
AGENTS_TABLE = "agents"

# table_name in the log -> kind in mana_ai.record_clocks
KIND_BY_TABLE = {MISSIONS_TABLE: "mission", AGENTS_TABLE: "agent"}


class RawChange(msgspec.Struct, frozen=True):
    """A sync_changes row as read from the database, not yet validated.

    `data` and `field_meta` are the JSON texts exactly as stored (jsonb::text), so that
    their size can be checked and their shape validated before anything trusts them.
    """

    id: str
    user_id: str
    table_name: str
    record_id: str
    op: str
    data: str | None
    field_meta: str | None
    # None when the stored value is outside what a datetime holds ('infinity', year
    # 10000): `created_at_text` then says what it was.
    created_at: datetime | None
    created_at_text: str | None = None


class Change(msgspec.Struct, frozen=True):
    """A validated change of one of our records, ready to merge."""

    id: str
    user_id: str
    table_name: str
    record_id: str
    op: str  # 'insert' | 'update' | 'delete'
    data: dict[str, Any]
    field_meta: dict[str, Any]
    created_at: datetime  # timezone-aware

    @property
    def kind(self) -> str:
        return KIND_BY_TABLE[self.table_name]
