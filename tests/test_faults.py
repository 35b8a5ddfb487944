"""Fault suite: the consumer is hurt while mana-sync writes, and nothing is lost. Every
scenario ends with the snapshots equal to a fold of the whole log and `consumer replay
--verify` exiting 0. Bounded: small storms, short waits (about a minute in all on an idle
machine)."""

from __future__ import annotations

import random
import time

import psycopg

from tests.faultkit import (
    ConsumerProcess,
    WriteStorm,
    assert_nothing_lost,
    replay_verify,
    wait_converged,
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
        for _ in range(20):
            consumer.start()
            # From "still importing" to "following the log": every phase gets killed.
            time.sleep(rng.uniform(0.1, 1.3))
            assert consumer.alive(), f"the consumer exited on its own:\n{consumer.output()}"
            consumer.kill()
            kills += 1
    assert kills >= 20 and storm.rows > 100
    assert checkpoint_version(db) > version, "no kill left the consumer time to apply"
    with consumer.start():
        wait_converged(db, 30)
    replay_verify(db)


def test_nothing_lost_helper_sees_a_plain_run(db: str) -> None:
    with ConsumerProcess(db), WriteStorm(db, writers=2, rows_per_writer=60):
        pass
    with ConsumerProcess(db):
        assert_nothing_lost(db)
