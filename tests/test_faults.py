"""Fault suite: the consumer is hurt while mana-sync writes, and nothing is lost. Every
scenario ends with the snapshots equal to a fold of the whole log and `consumer replay
--verify` exiting 0. Bounded: small storms, short waits (about a minute in all on an idle
machine)."""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.faultkit import (
    LISTENER_APP,
    WORK_APP,
    ConsumerProcess,
    WriteStorm,
    applied,
    assert_nothing_lost,
    journal_applied,
    reconnect_after_restart,
    replay_verify,
    session_pids,
    sessions,
    terminate_backends,
    wait_converged,
    write_probe,
)
from tests.helpers import checkpoint_version, wait_for
from tests.logtools import actual_snapshots, expected_snapshots, write


def test_sigkill_at_random_moments_during_a_storm_loses_nothing(db: str) -> None:
    rng = random.Random()
    consumer = ConsumerProcess(db)
    kills = 0
    version = checkpoint_version(db)
    with WriteStorm(db, writers=2, pause=0.004) as storm:
        for i in range(24):
            # The killed process's sessions end when the server notices its closed socket.
            wait_for(lambda: sessions(db, WORK_APP) == 0, 10, "the old sessions to end")
            before = checkpoint_version(db)
            consumer.start()
            # Every phase gets killed, a third of the kills each: at a random moment after
            # the start (importing, migrating, connecting); at a random moment after the
            # work connection is up (bootstrap, catch-up, following the storm); and at a
            # random moment after this run has moved the checkpoint, so that kills surely
            # land while the consumer applies the storm, however long a loaded machine
            # takes to start it.
            if i % 3 == 0:
                time.sleep(rng.uniform(0.05, 1.0))
            elif i % 3 == 1:
                wait_for(lambda: sessions(db, WORK_APP) > 0, 30, "the work connection")
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                wait_for(lambda b=before: checkpoint_version(db) > b, 30,
                         "this run to move the checkpoint")
                time.sleep(rng.uniform(0.0, 0.3))
            assert consumer.alive(), f"the consumer exited on its own:\n{consumer.output()}"
            consumer.kill()
            kills += 1
    assert kills >= 24 and storm.rows > 100
    assert checkpoint_version(db) > version, "no kill left the consumer time to apply"
    with consumer.start():
        wait_converged(db, 30)
    replay_verify(db)


def follow_started(dsn: str) -> None:
    wait_for(lambda: sessions(dsn, WORK_APP) > 0, 30, "the consumer's work connection")


def test_server_restart_mid_stream_reconnects_and_loses_nothing(db: str, pg_server) -> None:
    if pg_server.embedded is None:
        pytest.skip("restarting the server needs the embedded server")
    with ConsumerProcess(db) as consumer:
        follow_started(db)
        with WriteStorm(db, writers=2, pause=0.005) as storm:
            time.sleep(0.5)
            seconds = reconnect_after_restart(db, pg_server.restart)
            time.sleep(0.3)
        assert storm.reconnects >= 1, "the writers did not notice the restart"
        assert consumer.alive(), consumer.output()
        # Printed for the record (pytest -s); the bench measures it over several trials.
        print(f"\nreconnect after pg_ctl restart: server up -> lag 0 in {seconds:.2f} s")
        assert seconds < 20
        assert_nothing_lost(db)


def test_terminated_listener_and_work_connections_lose_nothing(db: str) -> None:
    with ConsumerProcess(db) as consumer:
        follow_started(db)
        with WriteStorm(db, writers=2, pause=0.005):
            for app in (LISTENER_APP, WORK_APP, LISTENER_APP, WORK_APP):
                time.sleep(0.4)
                assert terminate_backends(db, app) == 1, f"no single {app!r} session"
                # The consumer notices and comes back with both connections.
                wait_for(
                    lambda: sessions(db, LISTENER_APP) == 1 and sessions(db, WORK_APP) == 1,
                    20,
                    "the consumer to reconnect",
                )
        assert consumer.alive(), consumer.output()
        assert_nothing_lost(db)


def test_sigkill_between_a_chunks_read_and_its_commit_applies_it_once_after_restart(
    db: str,
) -> None:
    """The live path at its worst line: the pass's read has answered (on the cursor the
    projector keeps) and its write, sent, waits at a lock the test holds on the quarantine
    (the chunk has a row to quarantine), when the process is SIGKILLed. Nothing of the chunk
    commits, the checkpoint stays; the next process applies the good row and quarantines the
    bad one, once each."""
    from tests.test_faults_windows import Gate

    with ConsumerProcess(db) as first:
        write_probe(db, "probe")
        wait_for(lambda: applied(db, "probe"), 30, "the consumer following the log")
        with Gate(db) as gate:
            with psycopg.connect(db, autocommit=True) as conn, conn.transaction():
                write(conn, "aiMissions", "m-good", {"state": "active"}, user="u0")
                bad = write(conn, "aiMissions", "m-bad", {"state": "active"}, user="")
            waiting: list[int] = []

            def write_waits_at_the_gate() -> bool:
                with psycopg.connect(db, autocommit=True) as admin:
                    waiting[:] = [pid for (pid,) in admin.execute(
                        """SELECT pid FROM pg_stat_activity
                           WHERE application_name = %s AND %s = ANY(pg_blocking_pids(pid))
                             AND query LIKE 'WITH "clocks"%%'""",
                        (WORK_APP, gate.pid),
                    )]
                return bool(waiting)

            wait_for(write_waits_at_the_gate, 20, "the chunk's write waiting at the gate")
            version = checkpoint_version(db)
            first.kill()
            # The dead client's session ends within the client check interval (1 s), though
            # it waits on a lock: its write rolls back with everything it did.
            wait_for(lambda: waiting[0] not in session_pids(db, WORK_APP), 10,
                     "the killed process's session to end")
        assert not applied(db, "m-good")
        assert checkpoint_version(db) == version
    with ConsumerProcess(db) as second:
        wait_for(lambda: applied(db, "m-good"), 20, "the good row applied after the restart")
        assert_nothing_lost(db)
        with psycopg.connect(db) as conn:
            reasons = conn.execute(
                "SELECT reason FROM mana_ai.quarantine WHERE change_id = %s", (bad,)
            ).fetchall()
        assert len(reasons) == 1 and reasons[0][0].startswith("empty user_id"), reasons
        assert second.alive(), second.output()


def test_a_transaction_held_open_20s_holds_back_no_other_row(db: str) -> None:
    held = psycopg.connect(db)  # not autocommit: its transaction stays open until commit
    try:
        with ConsumerProcess(db) as consumer:
            follow_started(db)
            with WriteStorm(db, writers=1, pause=0.01):
                write(held, "aiMissions", "held", {"state": "active"}, user="u0")
                opened = time.monotonic()
                probes = 0
                while time.monotonic() - opened < 20:
                    # Rows committed meanwhile are applied at once, beside the open one.
                    probe = f"beside-{probes}"
                    write_probe(db, probe)
                    wait_for(lambda p=probe: applied(db, p), 5, f"{probe} applied")
                    assert not applied(db, "held")
                    probes += 1
                    time.sleep(1.0)
                held.commit()
                committed_at = time.monotonic()
                wait_for(lambda: applied(db, "held"), 5, "the held row after its commit")
            assert probes >= 10
            print(f"\nheld row applied {time.monotonic() - committed_at:.3f} s after its commit")
            assert consumer.alive(), consumer.output()
            assert_nothing_lost(db)
    finally:
        held.close()


# --------------------------------------------------------------------------- hostile rows

MAX_ROW_BYTES = 20_000  # the consumer under test quarantines anything larger


def _pg_text(**size: int) -> st.SearchStrategy[str]:
    """Text PostgreSQL can hold: text and jsonb refuse NUL (U+0000), and lone surrogates
    cannot be encoded (nor written as a jsonb escape), so no log row can carry either.
    Every text these strategies write goes through here, or the writer itself would fail."""
    return st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
                   **size)


_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False),
    _pg_text(max_size=20),
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(_pg_text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_odd_text = _pg_text(min_size=1, max_size=12)


class Hostile:
    """One hostile log row: what to insert, and the reason it must be quarantined with
    (None: it is odd but valid, and must be applied like any other row)."""

    def __init__(self, expect: str | None, **columns: Any) -> None:
        self.expect = expect
        self.columns = {
            "op": "update", "record_id": None, "user_id": "u0", "data": {"x": 1},
            "field_meta": {}, "created_at": None, **columns,
        }

    def __repr__(self) -> str:
        shown = {k: (str(v)[:60] + "...") if len(str(v)) > 60 else v
                 for k, v in self.columns.items()}
        return f"Hostile({self.expect!r}, {shown})"


def _nested(depth: int, brace: bool) -> Any:
    return ('{"a": ' * depth + "1" + "}" * depth) if brace else ("[" * depth + "]" * depth)


hostile_rows = st.one_of(
    # Rows that cannot be applied: each must be quarantined once, with this reason.
    _pg_text(max_size=12).filter(lambda s: s not in ("insert", "update", "delete")).map(
        lambda op: Hostile("unknown op", op=op)),
    st.sampled_from(["", " ", "\t\n"]).map(lambda r: Hostile("empty record_id", record_id=r)),
    st.sampled_from(["", "  "]).map(lambda u: Hostile("empty user_id", user_id=u)),
    st.sampled_from(["infinity", "-infinity", "10000-01-01 00:00+00", "294276-12-31 23:59+00",
                     "4713-01-01 00:00+00 BC", "0001-01-01 00:00+14"]).map(
        lambda t: Hostile("created_at out of range", created_at=t)),
    st.one_of(st.lists(_json, max_size=3), _pg_text(max_size=10), st.integers(), st.booleans(),
              st.none()).map(lambda d: Hostile("data is not a JSON object", data=d)),
    # Deeper than the decoder goes, yet under the size limit (7 bytes a brace level, as jsonb
    # prints it: 2500 levels are 17,508 bytes).
    st.tuples(st.integers(1500, 2500), st.booleans()).map(
        lambda t: Hostile("data nested too deeply", data=("raw", '{"x": ' + _nested(*t) + "}"))),
    # Both too deep and too large: the size is checked first (before any decoding), so the
    # size is the reason.
    st.integers(MAX_ROW_BYTES // 7 + 1, MAX_ROW_BYTES // 7 * 3).map(
        lambda d: Hostile("payload too large", data=("raw", '{"x": ' + _nested(d, True) + "}"))),
    st.integers(MAX_ROW_BYTES + 1, 3 * MAX_ROW_BYTES).map(
        lambda n: Hostile("payload too large", data={"blob": "x" * n})),
    st.one_of(st.lists(st.integers(), max_size=2), _pg_text(max_size=8), st.integers(),
              st.booleans()).map(lambda m: Hostile("field_meta is not a JSON object",
                                                   field_meta=m)),
    st.integers(2**64, 2**200).map(lambda n: Hostile("unmergeable", data={"n": n})),
    # Odd but valid: applied, and the snapshots must equal the fold.
    st.dictionaries(_odd_text, _json, min_size=1, max_size=4).map(
        lambda d: Hostile(None, data=d)),
    st.fixed_dictionaries({"state": _json, "nextRunAt": _json, "deletedAt": _json}).map(
        lambda d: Hostile(None, data=d)),
    st.fixed_dictionaries({"state": st.one_of(
        _json, st.sampled_from(["9999-12-31T23:59:59.999999999+14:00", "0001-01-01T00:00-14:00",
                                "2026-02-30T00:00:00Z", "yesterday", " 2026-01-01T00:00:00z ",
                                "+275760-09-13T00:00:00Z"]),
        st.fixed_dictionaries({"at": _json}))}).map(
        lambda m: Hostile(None, data={"state": "active"}, field_meta=m)),
    st.sampled_from(["0001-01-03 00:00+00", "9999-12-28 23:59:59.999999+00",
                     "1970-01-01 00:00+00"]).map(lambda t: Hostile(None, created_at=t)),
)


def _unstorable(value: Any) -> list[str]:
    """The strings in `value` (keys too) that PostgreSQL cannot store: NUL or a lone
    surrogate."""
    if isinstance(value, str):
        bad = "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value)
        return [value] if bad else []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _unstorable(k) + _unstorable(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _unstorable(v)]
    return []


@settings(max_examples=300, database=None)
@given(row=hostile_rows)
def test_hostile_rows_hold_only_text_postgresql_can_store(row: Hostile) -> None:
    """The strategy's own guard: a drawn row the server refuses would fail the writer of
    the test below, not the consumer (it once drew data = "\\x00")."""
    assert _unstorable(row.columns) == [], row


def _insert(conn: psycopg.Connection, row: Hostile, record_id: str) -> str:
    c = row.columns
    change_id = str(uuid.uuid4())

    def as_json(value: Any) -> str | None:
        if isinstance(value, tuple) and value[0] == "raw":
            return value[1]
        return None if value is None else json.dumps(value)

    conn.execute(
        """INSERT INTO public.sync_changes (id, app_id, table_name, record_id, user_id, op,
               data, field_meta, client_id, created_at)
           VALUES (%s, 'ai', 'aiMissions', %s, %s, %s, %s::jsonb, %s::jsonb, 'hostile',
                   coalesce(%s::timestamptz, now()))""",
        (change_id, c["record_id"] if c["record_id"] is not None else record_id,
         c["user_id"], c["op"], as_json(c["data"]), as_json(c["field_meta"]), c["created_at"]),
    )
    return change_id


def test_hostile_rows_are_quarantined_once_and_the_stream_goes_on(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        # mana-sync's CHECK on op would refuse an unknown op; a log that has one must not
        # stop us either. NUL cannot reach us at all: jsonb and text refuse it.
        conn.execute("ALTER TABLE public.sync_changes DROP CONSTRAINT sync_changes_op_check")
        for bad in ('{"a": "\\u0000"}',):
            with pytest.raises(psycopg.Error):
                conn.execute("SELECT %s::jsonb", (bad,))
    expected: dict[str, str] = {}
    good: list[str] = []
    with ConsumerProcess(db, ["--max-row-bytes", str(MAX_ROW_BYTES)]) as consumer:
        follow_started(db)

        @settings(max_examples=25, database=None)
        @given(rows=st.lists(hostile_rows, min_size=1, max_size=3))
        def example(rows: list[Hostile]) -> None:
            n = len(good)
            with psycopg.connect(db, autocommit=True) as conn, conn.transaction():
                # One transaction of mana-sync's shape: good rows around the hostile ones.
                good.append(write(conn, "aiMissions", f"good-{n}-a", {"n": n}, user="u0"))
                ids = [_insert(conn, row, f"hostile-{n}-{i}") for i, row in enumerate(rows)]
                good.append(write(conn, "aiMissions", f"good-{n}-b", {"n": n}, user="u0"))
            for change_id, row in zip(ids, rows, strict=True):
                if row.expect is not None:
                    expected[change_id] = row.expect
            wait_for(lambda: journal_applied(db), 15, "the consumer to pass the example")
            assert consumer.alive(), consumer.output()
            assert applied(db, f"good-{n}-a") and applied(db, f"good-{n}-b")

        example()
        assert consumer.alive(), consumer.output()
        with psycopg.connect(db) as conn:
            found = dict(conn.execute(
                "SELECT change_id::text, reason FROM mana_ai.quarantine").fetchall())
        assert set(found) == set(expected), "quarantined exactly the rows that cannot apply"
        for change_id, reason in expected.items():
            assert found[change_id].startswith(reason), (reason, found[change_id])
        assert actual_snapshots(db) == expected_snapshots(db, exclude=expected)
        replay_verify(db, ["--max-row-bytes", str(MAX_ROW_BYTES)])
        with psycopg.connect(db) as conn:  # replay quarantined nothing new or twice
            assert conn.execute("SELECT count(*) FROM mana_ai.quarantine").fetchone() == (
                len(expected),)
