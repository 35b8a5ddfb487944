"""Fault suite: the consumer is hurt while mana-sync writes, and nothing is lost. Every
scenario ends with the snapshots equal to a fold of the whole log and `consumer replay
--verify` exiting 0. Bounded: small storms, short waits (about a minute in all on an idle
machine)."""

from __future__ import annotations

import random
import time

import psycopg

from tests.faultkit import (
    WORK_APP,
    ConsumerProcess,
    WriteStorm,
    replay_verify,
    sessions,
    wait_converged,
    wait_until,
)


def checkpoint_version(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT version FROM mana_ai.checkpoint WHERE name = 'projection'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_sigkill_at_random_moments_during_a_storm_loses_nothing(db: str) -> None:
    rng = random.Random()
    consumer = ConsumerProcess(db)
    kills = 0
    version = checkpoint_version(db)
    with WriteStorm(db, writers=2, pause=0.004) as storm:
        for i in range(20):
            # The killed process's sessions end when the server notices its closed socket.
            wait_until(lambda: sessions(db, WORK_APP) == 0, 10, "the old sessions to end")
            consumer.start()
            # Every phase gets killed: half the kills come at a random moment after the
            # start (importing, migrating, connecting), half at a random moment after the
            # work connection is up (bootstrap, catch-up, following the storm).
            if i % 2:
                wait_until(lambda: sessions(db, WORK_APP) > 0, 30, "the work connection")
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                time.sleep(rng.uniform(0.05, 1.0))
            assert consumer.alive(), f"the consumer exited on its own:\n{consumer.output()}"
            consumer.kill()
            kills += 1
    assert kills >= 20 and storm.rows > 100
    assert checkpoint_version(db) > version, "no kill left the consumer time to apply"
    with consumer.start():
        wait_converged(db, 30)
    replay_verify(db)

