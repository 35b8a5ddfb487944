"""Apply a batch of log rows to the snapshot tables: validate, merge, write in bulk.

Runs inside a transaction the caller owns, so the caller can commit the checkpoint with
the snapshot writes. The same code serves the live projection, the bootstrap and replay
(which writes into shadow tables: `Targets`).
"""

from __future__ import annotations

import gc
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

import msgspec
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps

from . import metrics
from .decisions import due_instant
from .errors import CheckpointConflict, ConfigError, Deposed, is_transient
from .instants import EPOCH, from_us
from .journal import JournalRow
from .merge import RecordState, agent_visible, apply_change, decode_state, encode_state, materialize
from .model import KIND_BY_TABLE, Change, RawChange
from .sql import load
from .validate import Rejected, validate

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()

Key = tuple[str, str, str]  # (kind, user_id, record_id)


class Targets(msgspec.Struct, frozen=True):
    """Where a batch is written: the live tables, or a replay's shadow copies."""

    schema: str = "mana_ai"
    missions: str = "mission_snapshots"
    agents: str = "agent_snapshots"
    clocks: str = "record_clocks"
    due: str = "mission_due"  # when each mission falls due (snapshots/write.tmpl.sql)

    def ident(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema, table)


LIVE = Targets()


class Finish(msgspec.Struct, frozen=True):
    """What the statement that writes a batch also does (snapshots/write.tmpl.sql): the
    checkpoint's compare-and-set (`name` None: none) and the doorbell's arming."""

    name: str | None = None
    version: int = 0
    applied_below: int = 0
    epoch: int | None = None
    arm: bool = False
    key: int = 0


NO_FINISH = Finish()


class Applied(msgspec.Struct):
    """What one batch did, for metrics and for waking the scheduler."""

    rows: int = 0
    new: int = 0
    updated: int = 0
    quarantined: int = 0
    bad_stamps: int = 0
    missions: set[tuple[str, str]] = msgspec.field(default_factory=set)  # (user, mission)
    agents: set[tuple[str, str]] = msgspec.field(default_factory=set)  # (user, agent)
    # Whether the doorbell is armed after the write that carried an arming (None: none did).
    armed: bool | None = None
    # Answers still to be read (see settle), one row per writing statement.
    pending: list[psycopg.AsyncCursor] = msgspec.field(default_factory=list)

    async def settle(self) -> None:
        """Read the counts the writes returned: new vs updated snapshots, rows quarantined
        for the first time (a re-read of the same row is not a new quarantine)."""
        for cur in self.pending:
            row = await cur.fetchone()  # snapshots/write.tmpl.sql's answers
            assert row is not None
            inserted, written, reasons, _moved, armed = row
            self.new += inserted
            self.updated += written - inserted
            for reason in reasons or ():
                metrics.count_quarantined(reason)
                self.quarantined += 1
            if armed is not None:
                self.armed = armed
        self.pending.clear()

    def merge(self, other: Applied) -> None:
        assert not other.pending, "settle first"
        self.rows += other.rows
        self.new += other.new
        self.updated += other.updated
        self.quarantined += other.quarantined
        self.bad_stamps += other.bad_stamps
        self.missions |= other.missions
        self.agents |= other.agents


def _us_to_dt(us: int | None) -> datetime:
    return EPOCH if us is None else from_us(us)


def _visible(kind: str, record: dict[str, Any] | None) -> bool:
    # Agents with deletedAt count as deleted; missions with deletedAt stay (never due).
    return agent_visible(record) if kind == "agent" else record is not None


def _derived(
    kind: str, record_id: str, state: RecordState
) -> tuple[dict[str, Any] | None, bool, datetime | None]:
    """What a record's state gives, whichever way it is written: its snapshot, whether the
    snapshot is visible (stored) and, for a mission, when it falls due (None: never)."""
    record = materialize(record_id, state)
    at = due_instant(record) if kind == "mission" and record is not None else None
    return record, _visible(kind, record), at


async def apply_rows(
    conn: psycopg.AsyncConnection,
    raws: list[RawChange],
    *,
    max_bytes: int,
    targets: Targets = LIVE,
    states: dict[Key, bytes | None] | None = None,
    defer_counts: bool = False,
    missing: Sequence[tuple[str, str]] = (),
    finish: Finish = NO_FINISH,
    cursor: psycopg.AsyncCursor | None = None,
) -> Applied:
    """Validate, merge and write `raws`. `states`: the stored clocks of every record the
    rows touch (None: not stored yet), when the caller already read them; otherwise they
    are loaded here. `defer_counts`: leave the new/updated counts to `settle()`, so that
    in pipeline mode nothing waits for a result before the caller's COMMIT. `missing`:
    (change id, xid) of journaled rows whose log row is gone; they are quarantined as
    `log-row-missing` with the rejected rows. `finish`: what the writing statement also does
    (it runs even with nothing else to write). `cursor`: a cursor of `conn` to write with (a
    new one when None); its answer is read before this returns, so not with defer_counts."""
    assert cursor is None or not defer_counts, "a kept cursor's answer must be read at once"
    result = Applied()
    changes: dict[Key, list[tuple[Change, RawChange]]] = defaultdict(list)
    rejected: list[tuple[RawChange, str]] = []
    for raw in raws:
        checked = checked_row(raw, max_bytes)
        if isinstance(checked, Rejected):
            rejected.append((raw, checked.reason))
        else:
            changes[(checked.kind, checked.user_id, checked.record_id)].append((checked, raw))
    changed: list[tuple[Key, RecordState, bytes]] = []
    if changes:
        if states is None:
            states = await _load_states(conn, list(changes), targets)
        for key, batch in changes.items():
            before = states.get(key)
            try:
                state, encoded = _merge(before, batch, result)
            except Exception:
                # Something in these rows defeats the merge or its encoding (say an integer
                # past 64 bits). Find the culprits row by row; the others still apply.
                state, encoded = _merge_each(before, batch, result, rejected)
            if encoded == before or (before is None and state.last_applied_us is None):
                continue  # a re-delivery that changed nothing (or nothing applied): no write
            changed.append((key, state, encoded))
            kind, user_id, record_id = key
            (result.missions if kind == "mission" else result.agents).add((user_id, record_id))
    if changed or rejected or missing or finish.name is not None or finish.arm:
        await _write(conn, changed, targets, result, finish, rejected, missing, cursor)
    if not defer_counts:
        await result.settle()
    return result


_probe = msgspec.msgpack.Encoder()


def checked_row(raw: RawChange, max_bytes: int) -> Change | Rejected:
    """`validate`, and the row's data must be storable in the clocks (MessagePack holds no
    integer past 64 bits). Checked row by row, so that such a row is quarantined as
    unmergeable whatever rows it comes with: folded with a later row of its record that
    overwrites the field, the state would encode, and the row apply silently in a chunk
    or a window while the row path quarantines it."""
    try:
        checked = validate(raw, max_bytes)
    except Exception as exc:  # a row validate did not foresee must not stop the batch
        return Rejected(f"invalid row: {type(exc).__name__}: {exc}")
    if not isinstance(checked, Rejected):
        try:
            _probe.encode(checked.data)
        except Exception as exc:  # whatever the clocks' encoder refuses, as _merge_each
            return Rejected(_unmergeable(exc))
    return checked


def _unmergeable(exc: BaseException) -> str:
    return f"unmergeable: {type(exc).__name__}: {exc}"


def _merge(
    before: bytes | None, batch: list[tuple[Change, RawChange]], result: Applied
) -> tuple[RecordState, bytes]:
    state = decode_state(before) if before is not None else RecordState()
    bad = 0
    for change, _ in batch:
        bad += apply_change(state, change)
    encoded = encode_state(state)
    result.bad_stamps += bad
    result.rows += len(batch)
    return state, encoded


def _merge_each(
    before: bytes | None,
    batch: list[tuple[Change, RawChange]],
    result: Applied,
    rejected: list[tuple[RawChange, str]],
) -> tuple[RecordState, bytes]:
    encoded = before if before is not None else encode_state(RecordState())
    state = decode_state(encoded)
    for change, raw in batch:
        try:
            bad = apply_change(state, change)
            encoded = encode_state(state)
        except Exception as exc:
            state = decode_state(encoded)  # back to the last state that encoded
            rejected.append((raw, _unmergeable(exc)))
            continue
        result.bad_stamps += bad
        result.rows += 1
    return state, encoded


async def _load_states(
    conn: psycopg.AsyncConnection, keys: list[Key], targets: Targets
) -> dict[Key, bytes | None]:
    query = sql.SQL(load("snapshots/clocks_load.tmpl")).format(clocks=targets.ident(targets.clocks))
    cur = await conn.execute(
        query,
        {
            "kinds": [k[0] for k in keys],
            "users": [k[1] for k in keys],
            "records": [k[2] for k in keys],
        },
    )
    return {(kind, user, record): state for kind, user, record, state in await cur.fetchall()}


def _parts(text: str) -> dict[str, str]:
    """The "-- part <name>" sections of a statement file, by name."""
    parts: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("-- part "):
            name = line.removeprefix("-- part ").strip()
            parts[name] = ""
        elif name is not None:
            parts[name] += line + "\n"
    return parts


_WRITE = _parts(load("snapshots/write.tmpl"))


# The write statement's CTEs: (name, its part in the file, table, key column), in the
# order the tables are locked in (replay/lock_live.tmpl.sql). A batch's member of the
# same name holds its rows.
_PARTS: tuple[tuple[str, str, str, str], ...] = (
    ("clocks", "clocks", "clocks", ""),
    ("due", "due", "due", ""),
    ("missions", "upsert", "missions", "mission_id"),
    ("missions_gone", "gone", "missions", "mission_id"),
    ("agents", "upsert", "agents", "agent_id"),
    ("agents_gone", "gone", "agents", "agent_id"),
    ("quarantined", "quarantined", "", ""),
    ("moved", "moved", "", ""),
)
_UPSERTS = ("missions", "agents")  # the parts that return (inserted)


@cache
def _write_query(targets: Targets, names: frozenset[str], arm: bool) -> bytes:
    """The write statement with the parts `names`. Only identifiers and the file's own
    text go in. As bytes, composed once: psycopg would compose a `sql.Composed` again at
    every execution."""
    upserts = [n for n in _UPSERTS if n in names]
    answer = sql.SQL(_WRITE["answer"]).format(
        inserted=sql.SQL(
            " + ".join(f"(SELECT count(*) FILTER (WHERE inserted) FROM {n})" for n in upserts)
            or "0"
        ),
        written=sql.SQL(" + ".join(f"(SELECT count(*) FROM {n})" for n in upserts) or "0"),
        quarantined=sql.SQL(
            "(SELECT array_agg(reason) FROM quarantined)" if "quarantined" in names else "NULL"
        ),
        moved=sql.SQL("(SELECT count(*) FROM moved)" if "moved" in names else "0"),
        arm=sql.SQL("TRUE" if arm else "FALSE"),
    )
    ctes = [
        sql.SQL(_WRITE[shape].strip()).format(
            name=sql.Identifier(name),
            part=sql.Placeholder(name),
            table=targets.ident(getattr(targets, table)) if table else sql.SQL(""),
            key=sql.Identifier(key) if key else sql.SQL(""),
        )
        for name, shape, table, key in _PARTS
        if name in names
    ]
    query = sql.SQL("WITH ") + sql.SQL(",\n").join(ctes) + sql.SQL("\n") + answer
    return (query if ctes else answer).as_bytes(None)


async def _write(
    conn: psycopg.AsyncConnection,
    changed: list[tuple[Key, RecordState, bytes]],
    targets: Targets,
    result: Applied,
    finish: Finish = NO_FINISH,
    rejected: Sequence[tuple[RawChange, str]] = (),
    missing: Sequence[tuple[str, str]] = (),
    cursor: psycopg.AsyncCursor | None = None,
) -> None:
    """Write `changed` and quarantine `rejected` and `missing` ((change id, xid) of journaled
    rows whose log row is gone: `log-row-missing`) in one statement, with `finish`, on
    `cursor` (a new one when None). Its answers are left to `settle`: in pipeline mode
    nothing waits for them."""
    batch: dict[str, list[dict[str, Any]]] = {}
    clocks = batch.setdefault("clocks", []) if changed else []
    for (kind, user_id, record_id), state, encoded in changed:
        clocks.append(
            {"kind": kind, "user_id": user_id, "record_id": record_id, "state": encoded}
        )
        record, visible, at = _derived(kind, record_id, state)
        table = "missions" if kind == "mission" else "agents"
        if visible:
            batch.setdefault(table, []).append(
                {
                    "user_id": user_id,
                    "record_id": record_id,
                    "record": record,
                    "last_applied_at": _us_to_dt(state.last_applied_us),
                }
            )
        else:
            batch.setdefault(table + "_gone", []).append(
                {"user_id": user_id, "record_id": record_id}
            )
        if kind == "mission":
            batch.setdefault("due", []).append(
                {"user_id": user_id, "mission_id": record_id, "due_at": at}
            )
    if rejected or missing:
        batch["quarantined"] = [
            {"change_id": raw.id, "reason": reason, "raw": raw} for raw, reason in rejected
        ] + [
            {"change_id": change_id, "reason": MISSING, "raw": {"id": change_id, "xid": xid}}
            for change_id, xid in missing
        ]
    names = frozenset(batch) | ({"moved"} if finish.name is not None else set())
    cur = cursor if cursor is not None else conn.cursor()
    await cur.execute(
        _write_query(targets, names, finish.arm),
        {
            **{name: _json.encode(rows).decode() for name, rows in batch.items()},
            "cp_name": finish.name,
            "cp_version": finish.version,
            "cp_below": str(finish.applied_below),
            "epoch": finish.epoch,
            "key": finish.key,
        },
    )
    result.pending.append(cur)


_COPY = _parts(load("snapshots/copy.tmpl"))
# Binary COPY: no escaping of the records' JSON text, the clocks go as they are.
_COPY_TYPES = {
    "clocks": ["text", "text", "text", "bytea"],
    "due": ["text", "text", "timestamptz"],
    "missions": ["text", "text", "jsonb", "timestamptz"],
    "agents": ["text", "text", "jsonb", "timestamptz"],
}


@cache
def _copy_query(targets: Targets, part: str) -> bytes:
    table = getattr(targets, part)  # the parts are named as Targets names the tables
    return sql.SQL(_COPY[part].strip()).format(table=targets.ident(table)).as_bytes(None)


@cache
def lock_query(targets: Targets, mode: str) -> bytes:
    """LOCK the four tables of `targets` in `mode` (a literal of ours), in the one order
    every writer of them takes them in (replay/lock_live.tmpl.sql)."""
    return sql.SQL(load("replay/lock_live.tmpl")).format(
        clocks=targets.ident(targets.clocks),
        due=targets.ident(targets.due),
        missions=targets.ident(targets.missions),
        agents=targets.ident(targets.agents),
        mode=sql.SQL(mode),
    ).as_bytes(None)


async def _copy_fresh(
    conn: psycopg.AsyncConnection,
    fresh: list[tuple[Key, RecordState]],
    targets: Targets,
    result: Applied,
    hot: Hot,
) -> list[tuple[Key, RecordState, bytes]]:
    """Write records that nothing of is stored yet (see snapshots/copy.tmpl.sql): their
    visible snapshots, due entries and clocks, each table by one COPY; their encoded
    states go into `hot`. The tables are locked first, in the one order, so that the
    COPYs may go in the order that lets our work and the server's overlap: first the
    missions' snapshots (the server's heaviest part: the JSON parsed, three indexes),
    taken by the server while we encode every state and make every snapshot and due
    instant; then the agents', the due entries and the clocks, which cost us little.

    Returns the records that are not visible, to be written as the upsert path writes
    them (their snapshot and due entry deleted): a COPY of their clocks alone would meet
    no key, and a snapshot stored without clocks (say upstream's) would stay."""
    await conn.execute(lock_query(targets, "ROW EXCLUSIVE"))
    later: dict[str, list[tuple[Any, ...]]] = {"agents": [], "due": [], "clocks": []}
    gone: list[tuple[Key, RecordState, bytes]] = []
    cur = conn.cursor()
    set_json_dumps(_json.encode, cur)  # records as the write statement encodes them
    async with cur.copy(_copy_query(targets, "missions")) as copy:
        copy.set_types(_COPY_TYPES["missions"])
        for key, state in fresh:
            kind, user_id, record_id = key
            encoded = encode_state(state)
            hot[key] = (encoded, state)
            record, visible, at = _derived(kind, record_id, state)
            if not visible:
                gone.append((key, state, encoded))
                continue
            later["clocks"].append((kind, user_id, record_id, encoded))
            row = (user_id, record_id, record, _us_to_dt(state.last_applied_us))
            if kind == "mission":
                await copy.write_row(row)
            else:
                later["agents"].append(row)
            result.new += 1
            if at is not None:
                later["due"].append((user_id, record_id, at))
    for part, rows in later.items():
        if rows:
            async with cur.copy(_copy_query(targets, part)) as copy:
                copy.set_types(_COPY_TYPES[part])
                for row in rows:
                    await copy.write_row(row)
    return gone


class CollectorPause:
    """No cyclic garbage collection from `hold` to `release` (reference counting still frees
    everything at once), across several blocks: a pass's windows. A fold allocates a few
    dicts per row (decoded JSON, field cells) and keeps many of them: with the collector on,
    it scans that growing heap again and again, and once let back in between two windows it
    scans the survivors (the states the next window starts from) at once: 0.5-0.66 s of a
    200k-record catch-up, against 0.07-0.10 s held across windows. The rows' values are
    JSON trees and form no cycles. A long pass collects the young generation at the first
    `hold` once `bound` seconds went by since the pause or the last such collection, so
    cyclic garbage that other tasks make and drop meanwhile waits no longer (while paused,
    whatever is made stays young; what survives a collection waits for the pass's end).
    Enabling the collector for that moment would collect nothing: collections start at an
    allocation, and the next `hold` disables it again before there is one."""

    def __init__(self, bound: float = 60.0) -> None:
        self.bound = bound
        self._since: float | None = None  # when we paused it or last collected (None: not ours)

    def hold(self) -> None:
        now = time.monotonic()
        if self._since is not None:
            if now - self._since >= self.bound:
                gc.collect(0)
                self._since = now
        elif gc.isenabled():  # paused by someone else: theirs to end
            gc.disable()
            self._since = now

    def release(self) -> None:
        if self._since is not None:
            self._since = None
            gc.enable()


# Records per statement of a window's write. A part's JSON (about 1.5 KB a record) then
# fits the socket's buffer: the server takes the part whole and writes it while we make the
# next one. Parts of 2,000 records ran at half the speed, with twice the client CPU per
# row (bench_catchup, docs/benchmarks.md).
WINDOW_PART = 250

Hot = dict[Key, tuple[bytes, RecordState]]  # decoded clocks, by the bytes they encode to


class Window:
    """A catch-up window: journal rows folded by record as they arrive, each record's
    clocks and snapshot written once at the end (in the caller's transaction, with its
    checkpoint move). The fold is the row path's: the merge is order independent, so one
    state per record taking every row of the window equals the states the row path
    writes and reads back chunk after chunk; validation and quarantine are the same.

    `hot`: states a previous window of the same pass wrote, decoded, by their bytes. A
    row's stored clocks equal to those bytes are that state: no MessagePack decode. The
    states are mutated in place, so the caller drops `hot` when a window fails."""

    def __init__(self, max_bytes: int, hot: Hot | None = None) -> None:
        self.max_bytes = max_bytes
        self.hot: Hot = hot or {}
        self.folds: dict[Key, tuple[bytes | None, RecordState]] = {}
        self.rejected: list[tuple[RawChange, str]] = []
        self.missing: list[tuple[str, str]] = []
        self.result = Applied()

    def add(self, rows: Sequence[JournalRow]) -> None:
        """Validate and fold rows (a row's JSON is decoded once, by validate). The caller
        keeps the collector paused for the window (`CollectorPause`)."""
        folds = self.folds
        result = self.result
        max_bytes = self.max_bytes
        # Counted here and added at the end: a row that fails the merge fails the window,
        # whose result is then dropped whole.
        added = bad = 0
        for row in rows:
            if row.missing:
                self.missing.append((row.change_id, row.xid))
                continue
            # A journal row with its log row has RawChange's fields: no copy to validate.
            checked = checked_row(row, max_bytes)  # type: ignore[arg-type]
            if type(checked) is Rejected:
                self.rejected.append((row.raw(), checked.reason))
                continue
            assert type(checked) is Change
            key = (KIND_BY_TABLE[checked.table_name], checked.user_id, checked.record_id)
            fold = folds.get(key)
            if fold is None:
                # Every read of the window sees the same stored clocks for a record: only
                # this window's own writes (at its end) change them.
                before = row.state
                hot = self.hot.get(key)
                if hot is not None and hot[0] == before:
                    state = hot[1]
                elif before is not None:
                    state = decode_state(before)
                else:
                    state = RecordState()
                fold = folds[key] = (before, state)
            bad += apply_change(fold[1], checked)
            added += 1
        result.bad_stamps += bad
        result.rows += added

    async def write(
        self, conn: psycopg.AsyncConnection, targets: Targets = LIVE, part: int = WINDOW_PART
    ) -> Hot:
        """Write every changed record once: those with no stored clocks by COPY
        (`_copy_fresh`), the others in parts of `part` records (each part one statement
        that locks the tables in the one order, snapshots/write.tmpl.sql), pipelined, so
        the server writes one part while the next is encoded. Then the quarantine. Returns
        the states by their bytes, for the next window's `hot`. Counts settle later."""
        result = self.result
        hot: Hot = {}
        fresh: list[tuple[Key, RecordState]] = []  # encoded by _copy_fresh, as it copies
        known: list[tuple[Key, RecordState, bytes]] = []
        for key, (before, state) in self.folds.items():
            if before is None:
                if state.last_applied_us is None:
                    continue  # nothing applied to a record not stored: no write
                fresh.append((key, state))
            else:
                encoded = encode_state(state)
                hot[key] = (encoded, state)
                if encoded == before:
                    continue  # a re-delivery that changed nothing: no write
                known.append((key, state, encoded))
            (result.missions if key[0] == "mission" else result.agents).add(key[1:])
        if fresh:
            known += await _copy_fresh(conn, fresh, targets, result, hot)
        if not (known or self.rejected or self.missing):
            return hot
        async with conn.pipeline():
            for i in range(0, len(known), part):
                await _write(conn, known[i : i + part], targets, result)
            if self.rejected or self.missing:
                await _write(conn, [], targets, result, NO_FINISH, self.rejected, self.missing)
        return hot


MISSING = "log-row-missing"


async def quarantine_from_log(conn: psycopg.AsyncConnection, change_id: str, reason: str) -> bool:
    """Quarantine one row by its id, its raw copy taken from the log on the server (for a
    row that cannot be read or applied even alone). True if it is new in quarantine."""
    cur = await conn.execute(
        load("journal/quarantine_from_log"), {"id": change_id, "reason": reason}
    )
    fresh = await cur.fetchone() is not None
    if fresh:
        metrics.count_quarantined(reason)
    return fresh


def unapplicable(exc: BaseException) -> str:
    """The quarantine reason for a row that failed on its own."""
    text = str(exc).strip().splitlines()
    return f"unapplicable: {type(exc).__name__}: {text[0] if text else ''}"[:500]


def isolating(exc: BaseException) -> bool:
    """Whether a failed batch should be retried row by row: not when the connection is
    gone, the checkpoint moved, a newer leader took over, or the configuration is wrong
    (those are not a row's fault), and not for cancellation."""
    return isinstance(exc, Exception) and not isinstance(
        exc, (CheckpointConflict, ConfigError, Deposed)
    ) and not is_transient(exc)


async def apply_isolated(
    conn: psycopg.AsyncConnection,
    raws: list[RawChange],
    *,
    max_bytes: int,
    targets: Targets = LIVE,
) -> Applied:
    """`apply_rows` in a savepoint of the caller's transaction; when the batch fails for
    something a row holds (the server rejects a value, a bug meets an input it did not
    foresee), each row is applied alone in its own savepoint and a row that still fails
    is quarantined with the error, its raw copy taken from the log. The good rows apply."""
    try:
        async with conn.transaction():
            return await apply_rows(conn, raws, max_bytes=max_bytes, targets=targets)
    except Exception as exc:
        if not isolating(exc):
            raise
        log.warning("a batch of %d rows failed (%s); applying it row by row", len(raws), exc)
    return await apply_by_row(conn, raws, max_bytes=max_bytes, targets=targets)


async def apply_by_row(
    conn: psycopg.AsyncConnection,
    raws: list[RawChange],
    *,
    max_bytes: int,
    targets: Targets = LIVE,
) -> Applied:
    """Each row alone in a savepoint; a row that fails is quarantined with the error."""
    result = Applied()
    for raw in raws:
        try:
            async with conn.transaction():
                one = await apply_rows(conn, [raw], max_bytes=max_bytes, targets=targets)
        except Exception as exc:
            if not isolating(exc):
                raise
            async with conn.transaction():
                if await quarantine_from_log(conn, raw.id, unapplicable(exc)):
                    result.quarantined += 1
            continue
        result.merge(one)
    return result
