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


class Actor(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Who wrote a field (a `MetaEntry`'s "actor"), in the shape mana's clients write."""

    kind: str | None = None
    principalId: str | None = None  # noqa: N815 - the JSON key


class MetaEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A field_meta entry of the object shape ``{"at": ..., "actor": {...}, "origin": ...}``,
    decoded without building its dicts (validate's typed decode). Only exactly these keys,
    fully decoded: any other key or type makes validate decode the whole field_meta as
    plain JSON instead, so both ways accept and reject the same texts. The merge reads
    `at` as it reads a dict entry's "at"."""

    at: Any = None
    actor: Actor | None = None
    origin: str | None = None


class Change(msgspec.Struct, frozen=True):
    """A validated change of one of our records, ready to merge."""

    id: str
    user_id: str
    table_name: str
    record_id: str
    op: str  # 'insert' | 'update' | 'delete'
    data: dict[str, Any]
    # The entries as written (JSON), except that an entry of upstream's object shape may
    # come as a MetaEntry (see there).
    field_meta: dict[str, Any]
    created_at: datetime  # timezone-aware

    @property
    def kind(self) -> str:
        return KIND_BY_TABLE[self.table_name]
