"""Faults in the middle of a catch-up window, against a real server and `consumer run`
processes: the server restarts, the work connection is terminated, the leader is SIGKILLed
with a second copy standing by, the leader is deposed, the window stalls past stall_after
(the watchdog severs it). Each time the consumer (or its successor) applies the whole
backlog: the snapshots equal the fold of the log (`consumer replay --verify` agrees),
exactly the rows that cannot apply are quarantined, once, and the checkpoint is past every
journal row.

Mid-window, for certain. The backlog is written while no consumer runs; the rows it must
quarantine come after the pass's first chunk, so only a window's last write statement (the
one that quarantines them) touches mana_ai.quarantine. The test holds that table locked (the
gate): the consumer's first chunk commits (the checkpoint moves once), then its window reads
and folds the rest, writes its first parts and waits at the gate, its transaction open,
until the test hurts it. A chunk is one statement; a window's statement runs in a
transaction that began before it, and that transaction has written (it has an xid).
"""

from __future__ import annotations

import time

import psycopg
import pytest

from consumer import locks
from consumer.projection import CHECKPOINT, Projector
from consumer.sql import load
from tests.faultkit import (
    LISTENER_APP,
    WORK_APP,
    ConsumerProcess,
    WriteStorm,
    advisory_lock,
    assert_nothing_lost,
    journal_applied,
    session_pids,
    sessions,
)
from tests.helpers import checkpoint_version, free_port, project, wait_for
from tests.logtools import actual_snapshots, expected_snapshots, write
from tests.test_catchup import bootstrapped
from tests.test_faults_leader import health_of, role_of

BATCH = 50  # the pass's first chunk; the window reads the rest in reads of this size
RUN = ("--batch-size", str(BATCH))
# Generous for a loaded 2-core machine; an idle one takes a second or two.
WITHIN = 30.0


class Gate:
    """A lock on mana_ai.quarantine held by the test: writes that quarantine wait at it."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute("LOCK TABLE mana_ai.quarantine IN EXCLUSIVE MODE")
        self.pid = self.conn.info.backend_pid

    def open(self) -> None:
        """Let the waiting writes through (nothing to do once the server ended the session)."""
        try:
            self.conn.rollback()
        except psycopg.OperationalError:
            pass
        self.conn.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()


def backlog(dsn: str) -> dict[str, str]:
    """Write the backlog while no consumer runs: a storm's rows, one transaction with two
    rows that must be quarantined beside a good one, the storm's rows again. Returns the
    quarantined rows' change ids and reasons. The bootstrap is marked done: the backlog goes
    through the journal."""
    bootstrapped(dsn)

    def storm(rows: int) -> None:
        s = WriteStorm(dsn, writers=2, rows_per_writer=rows, records=200, pause=0).start()
        for t in s.threads:
            t.join(60)
        s.stop()
        assert s.rows >= 2 * rows

    storm(150)
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        write(conn, "aiMissions", "beside", {"state": "active"}, user="u0")
        bad = {
            write(conn, "aiMissions", "m-bad", {"state": "active"}, user=""): "empty user_id",
            write(conn, "agents", " ", {"name": "x"}, user="u0"): "empty record_id",
        }
    storm(200)
    return bad


def first_chunk(dsn: str) -> set[str]:
    """The change ids of the pass's first chunk: the first BATCH journal rows."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT j.change_id::text FROM mana_ai.journal j "
            "ORDER BY j.xid, j.change_id LIMIT %s",
            (BATCH,),
        ).fetchall()
    return {change_id for (change_id,) in rows}


def windows_at_the_gate(dsn: str, gate: Gate) -> list[int]:
    """Backend pids of work sessions waiting at the gate inside a window: a statement of a
    transaction that began before it and has written already."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        rows = admin.execute(
            """SELECT pid FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = %s
                 AND %s = ANY(pg_blocking_pids(pid))
                 AND xact_start < query_start AND backend_xid IS NOT NULL
               ORDER BY pid""",
            (WORK_APP, gate.pid),
        ).fetchall()
    return [pid for (pid,) in rows]


def window_in_flight(dsn: str, gate: Gate, version: int, others: tuple[int, ...] = ()) -> int:
    """Wait until a window (of a session not in `others`) waits at the gate, the pass's
    first chunk having moved the checkpoint to `version`; rows remain. Its backend pid."""
    pids: list[int] = []

    def found() -> bool:
        pids[:] = [p for p in windows_at_the_gate(dsn, gate) if p not in others]
        return bool(pids)

    wait_for(found, WITHIN, "a window waiting at the gate")
    assert checkpoint_version(dsn) == version, "the first chunk moved it once, no window did"
    assert not journal_applied(dsn), "rows remain past the checkpoint"
    return pids[0]


def leader_epoch(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT leader_epoch FROM mana_ai.checkpoint WHERE name = %s", (CHECKPOINT,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def quarantined(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT change_id::text, reason FROM mana_ai.quarantine"))


def finished_whole(dsn: str, bad: dict[str, str], *running: ConsumerProcess) -> None:
    """The postconditions of every scenario: the checkpoint passes every journal row, the
    snapshots equal the fold of the log (and replay --verify agrees), exactly `bad` is
    quarantined, with its reasons, and the consumers still run."""
    wait_for(lambda: journal_applied(dsn), WITHIN, "the checkpoint past the whole backlog")
    assert_nothing_lost(dsn)
    found = quarantined(dsn)
    assert set(found) == set(bad), found
    for change_id, reason in bad.items():
        assert found[change_id].startswith(reason), (reason, found[change_id])
    for proc in running:
        assert proc.alive(), proc.output()


def test_server_restart_while_a_window_writes(db: str, pg_server) -> None:
    if pg_server.embedded is None:
        pytest.skip("restarting the server needs the embedded server")
    bad = backlog(db)
    version = checkpoint_version(db)
    with Gate(db) as gate, ConsumerProcess(db, RUN) as consumer:
        window_in_flight(db, gate, version + 1)
        pg_server.restart()  # every session ends: the window's, and the gate's
        finished_whole(db, bad, consumer)
        assert "connection lost" in consumer.output()


def test_work_connection_terminated_mid_window(db: str) -> None:
    bad = backlog(db)
    version = checkpoint_version(db)
    with Gate(db) as gate, ConsumerProcess(db, RUN) as consumer:
        pid = window_in_flight(db, gate, version + 1)
        with psycopg.connect(db, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The consumer reconnects and starts over from the checkpoint: a first chunk (the
        # checkpoint moves once more), then a window that reaches the gate again. The
        # terminated window moved nothing.
        window_in_flight(db, gate, version + 2, others=(pid,))
        gate.open()
        finished_whole(db, bad, consumer)


def test_sigkilled_leader_mid_window_the_standby_finishes(db: str) -> None:
    bad = backlog(db)
    version = checkpoint_version(db)
    ports = free_port(), free_port()
    first = ConsumerProcess(db, [*RUN, "--metrics-port", str(ports[0])])
    second = ConsumerProcess(db, [*RUN, "--metrics-port", str(ports[1])])
    with Gate(db) as gate, first:
        pid = window_in_flight(db, gate, version + 1)
        with second:  # started now, while the first is inside its window
            wait_for(lambda: role_of(ports[1]) == "standby", WITHIN, "the second copy stands by")
            # It applies nothing: no work connection of its own, the checkpoint unmoved.
            assert sessions(db, WORK_APP) == 1
            assert checkpoint_version(db) == version + 1
            epoch = leader_epoch(db)
            first.kill()
            wait_for(lambda: role_of(ports[1]) == "leader", WITHIN, "the second copy leads")
            assert leader_epoch(db) == epoch + 1
            # The dead leader's server session still waits at the gate (a lock wait does
            # not look at its client), holding the rows its window wrote. Let it through:
            # what the server still has of the window (its compare-and-set, if the client
            # had sent it) meets the new epoch; it commits nothing and ends.
            assert windows_at_the_gate(db, gate) == [pid]
            gate.open()
            wait_for(lambda: pid not in session_pids(db, WORK_APP), WITHIN, "its session ends")
            finished_whole(db, bad, second)
            assert role_of(ports[1]) == "leader"


def test_a_deposed_leaders_window_moves_nothing_and_it_stands_by(db: str) -> None:
    bad = backlog(db)
    done = first_chunk(db)
    version = checkpoint_version(db)
    port = free_port()
    with Gate(db) as gate, ConsumerProcess(db, [*RUN, "--metrics-port", str(port)]) as old:
        pid = window_in_flight(db, gate, version + 1)
        epoch = leader_epoch(db)
        # A new leader takes over as one does: the old leader's listener session (holding
        # the leader lock) ends, the newcomer takes the lock and a new epoch. The old
        # leader's work connection, busy in its window, has not noticed.
        (holder,) = [p for p, _, granted, _ in advisory_lock(db, locks.LEADER) if granted]
        with psycopg.connect(db, autocommit=True) as new:
            new.execute("SELECT pg_terminate_backend(%s)", (holder,))
            new.execute("SELECT pg_advisory_lock(%s)", (locks.LEADER,))
            row = new.execute(load("checkpoint/leader_take"), {"name": CHECKPOINT}).fetchone()
            assert row is not None and int(row[0]) == epoch + 1
            assert windows_at_the_gate(db, gate) == [pid]
            gate.open()
            # The window's compare-and-set is refused (not the idle probe: the pass never
            # ended), and the old leader stands by.
            refused = f"deposed: leader epoch {epoch} of checkpoint {CHECKPOINT} is gone"
            wait_for(lambda: refused in old.output(), WITHIN, "the window's CAS refused")
            wait_for(lambda: role_of(port) == "standby", WITHIN, "the old leader stands by")
            assert sessions(db, WORK_APP) == 0, "a standby holds no work connection"
            # Its cut-off pass left a ring unanswered: a standby reports no apply lag for it
            # (that lag only grew while it stood by, and turned /healthz 503 after 30 s).
            # The lag is sampled once a second: look for longer than that.
            seen = []
            for _ in range(6):
                seen.append(health_of(port))
                time.sleep(0.5)
            assert all(h == (200, 0.0) for h in seen), seen
            # Its window moved nothing: the checkpoint is the first chunk's, the snapshots
            # are the fold of the first chunk's rows, nothing is quarantined.
            assert checkpoint_version(db) == version + 1
            with psycopg.connect(db) as conn:
                logged = {r[0] for r in conn.execute("SELECT id::text FROM public.sync_changes")}
            assert actual_snapshots(db) == expected_snapshots(db, exclude=logged - done)
            assert quarantined(db) == {}
            # The new leader finishes the backlog under its epoch; the old one stands by.
            newcomer = Projector(batch_size=BATCH)
            newcomer.epoch = epoch + 1
            project(db, newcomer)
            assert role_of(port) == "standby" and sessions(db, WORK_APP) == 0
            finished_whole(db, bad, old)
        # The newcomer leaves: the old leader leads again, with nothing left to apply.
        wait_for(lambda: role_of(port) == "leader", WITHIN, "the old leader leads again")
        assert leader_epoch(db) == epoch + 2
        finished_whole(db, bad, old)
        leader = [app for _, _, granted, app in advisory_lock(db, locks.LEADER) if granted]
        assert leader == [LISTENER_APP]


def test_a_window_stalled_past_stall_after_is_severed_and_a_new_term_finishes(db: str) -> None:
    bad = backlog(db)
    version = checkpoint_version(db)
    with Gate(db) as gate, ConsumerProcess(db, [*RUN, "--stall-after", "2"]) as consumer:
        pid = window_in_flight(db, gate, version + 1)
        epoch = leader_epoch(db)
        # Nothing commits for 2 s: the watchdog severs the work connection, the term ends
        # and a new one begins (a new epoch) while the window waits at the gate still.
        severed = "apply pass: nothing committed: no answer within 2 s"
        wait_for(lambda: severed in consumer.output(), WITHIN, "the stalled window severed")
        wait_for(lambda: leader_epoch(db) > epoch, WITHIN, "a new term")
        # The severed window's server session waits on (it does not look at its client),
        # holding the rows it wrote; the new term's first chunk waits for them. Let it
        # through: it meets the new epoch and commits nothing (had it moved the checkpoint,
        # the new term's compare-and-set would find the version moved and stop the process).
        assert pid in windows_at_the_gate(db, gate)
        gate.open()
        wait_for(lambda: pid not in session_pids(db, WORK_APP), WITHIN, "its session ends")
        finished_whole(db, bad, consumer)
