"""The armed doorbell under faults, against a real server and `consumer run` processes: the
leader is SIGKILLed while parked armed (and right after a row rang it, before it could take
the ring) with a standby running; the server restarts while the consumer is parked armed.

Each time a row written afterwards is applied within seconds. The safety poll is a minute
away, so only a ring or a new term's first catch-up can have applied it. Nothing is lost or
applied twice (the snapshots equal the fold of the log, `consumer replay --verify` agrees),
and the doorbell lock ends up held by exactly one session: the new leader's work
connection, parked on its own arming."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from consumer import locks
from tests.faultkit import (
    LISTENER_APP,
    WORK_APP,
    ConsumerProcess,
    advisory_lock,
    applied,
    assert_nothing_lost,
    session_pids,
    write_probe,
)
from tests.helpers import wait_for
from tests.test_doorbell import Bell

SAFETY_POLL = 60
SLOW = ("--safety-poll", str(SAFETY_POLL))
# How long a row may take here: room for a loaded 2-core machine, far below the safety poll
# (an idle machine takes well under a second).
PROMPT = 15.0


def parked(dsn: str) -> int | None:
    """The backend pid of the work session that holds the doorbell armed, when it is the
    only session holding or waiting for the doorbell lock; else None."""
    rows = advisory_lock(dsn, locks.DOORBELL)
    if len(rows) == 1 and rows[0][1:] == ("ExclusiveLock", True, WORK_APP):
        return rows[0][0]
    return None


def standing_by(dsn: str) -> bool:
    """A leader holds its lock and another session waits for it (the standby)."""
    rows = advisory_lock(dsn, locks.LEADER)
    return any(granted for _, _, granted, _ in rows) and any(
        not granted for _, _, granted, _ in rows
    )


def assert_armed_by_the_only_leader(dsn: str) -> None:
    """One leader (one listener session holds the leader lock, one work session), and the
    doorbell lock is held by that work session alone, exclusively."""
    work = session_pids(dsn, WORK_APP)
    assert len(work) == 1, f"work sessions: {work}"
    assert advisory_lock(dsn, locks.DOORBELL) == [(work[0], "ExclusiveLock", True, WORK_APP)]
    leader = [row for row in advisory_lock(dsn, locks.LEADER) if row[2]]
    assert len(leader) == 1 and leader[0][3] == LISTENER_APP, leader


def the_ring_still_works(dsn: str) -> float:
    """A row written now rings once and is applied at once; returns the seconds it took."""
    with Bell(dsn) as bell:
        write_probe(dsn, "later")
        took = wait_for(lambda: applied(dsn, "later"), PROMPT, "a row after the fault applied")
    assert bell.rings == 1, f"{bell.rings} rings for one commit to the parked consumer"
    return took


def recovered_whole(dsn: str, proc: ConsumerProcess, parked_anew: Callable[[], bool]) -> float:
    """After a fault: the consumer parks armed again (`parked_anew`), on the doorbell of
    the only leader's work session; a later row rings once and applies; the process is
    alive and nothing is lost. Returns the seconds that later row took."""
    wait_for(parked_anew, PROMPT, "the consumer parked armed again")
    assert_armed_by_the_only_leader(dsn)
    later = the_ring_still_works(dsn)
    assert proc.alive(), proc.output()
    assert_nothing_lost(dsn)
    return later


@pytest.mark.parametrize("moment", ["parked", "ring in flight"])
def test_a_leader_killed_while_armed_hands_over_and_no_row_waits_for_the_safety_poll(
    db: str, moment: str
) -> None:
    leader, standby = ConsumerProcess(db, SLOW), ConsumerProcess(db, SLOW)
    with leader:
        write_probe(db, "before")
        wait_for(lambda: applied(db, "before"), 30, "the leader applying")
        with standby:
            wait_for(lambda: standing_by(db), 30, "the standby waiting for the leader lock")
            # Nothing is written meanwhile: the leader parks (armed) and stays parked.
            wait_for(lambda: parked(db) is not None, 30, "the leader parked armed")
            old = parked(db)
            assert old is not None
            with Bell(db) as bell:
                if moment == "ring in flight":
                    # Frozen while parked: a row commits and rings, the leader never takes
                    # the ring. Its sessions live on (holding both locks) until the kill.
                    os.kill(leader.pid, signal.SIGSTOP)
                    write_probe(db, "rang")
                    wait_for(lambda: bell.rings >= 1, 10, "the commit to ring")
                    assert not applied(db, "rang"), "a frozen leader applied a row"
                leader.kill()
                killed = time.monotonic()
                write_probe(db, "after")
                took = wait_for(
                    lambda: applied(db, "after")
                    and (moment == "parked" or applied(db, "rang")),
                    PROMPT,
                    "the rows after the kill applied by the standby",
                )
            since_kill = time.monotonic() - killed
            # The new leader parks on an arming of its own; the old session's is gone.
            later = recovered_whole(db, standby, lambda: parked(db) not in (None, old))
    print(f"\nleader killed ({moment}): rows applied {since_kill:.2f} s after the kill "
          f"(waited {took:.2f} s); a row afterwards {later:.3f} s")


def test_a_server_restart_while_armed_rearms_on_the_new_work_session_only(
    db: str, pg_server
) -> None:
    if pg_server.embedded is None:
        pytest.skip("restarting the server needs the embedded server")
    with ConsumerProcess(db, SLOW) as consumer:
        write_probe(db, "before")
        wait_for(lambda: applied(db, "before"), 30, "the consumer applying")
        wait_for(lambda: parked(db) is not None, 30, "the consumer parked armed")
        pg_server.restart()  # returns once the server accepts connections again
        up = time.monotonic()
        write_probe(db, "after")
        wait_for(lambda: applied(db, "after"), PROMPT, "a row after the restart applied")
        took = time.monotonic() - up
        # Idle again: parked, and the doorbell is held by the new work session alone.
        later = recovered_whole(db, consumer, lambda: parked(db) is not None)
    print(f"\nserver restart while armed: a row applied {took:.2f} s after the server was up;"
          f" a row afterwards {later:.3f} s")
