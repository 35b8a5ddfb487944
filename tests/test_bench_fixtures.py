"""The benchmark's fixtures against a real server (the benchmark's pure parts are tested
in tests/unit/test_bench_tools.py)."""

from __future__ import annotations


def test_indexes_dropped_for_a_load_come_back_the_same(db: str) -> None:
    import psycopg

    from bench.fixtures import indexes_dropped

    query = """SELECT indexname, indexdef FROM pg_indexes
               WHERE schemaname = 'public' AND tablename = 'sync_changes' ORDER BY 1"""
    with psycopg.connect(db, autocommit=True) as conn:
        before = conn.execute(query).fetchall()
        with indexes_dropped(conn, "public.sync_changes"):
            during = conn.execute(query).fetchall()
        assert conn.execute(query).fetchall() == before
    assert len(during) == 1 and during[0][0] == "sync_changes_pkey"  # the constraint's stays
    assert len(before) > 1


def test_server_cpu_keeps_an_exited_backends_share(db: str) -> None:
    """The cost benchmark's server column: CPU a backend spent still counts after it has
    exited (through the postmaster's reaped children), so an arm's writers are not lost."""
    import time

    import psycopg
    import pytest

    from bench.procs import children_of, postmaster_of, proc_cpu, server_cpu

    with psycopg.connect(db, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        postmaster = postmaster_of(pid)
        if postmaster is None:
            pytest.skip("the server does not run on this machine: /proc cannot see it")
        before = server_cpu(postmaster)
        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
        spent = proc_cpu(pid)
    deadline = time.monotonic() + 10
    while pid in children_of(postmaster) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pid not in children_of(postmaster), "the backend was not reaped"
    after = server_cpu(postmaster)
    assert before is not None and after is not None and spent is not None
    assert spent >= 0.05  # the query took measurable CPU
    assert after - before >= spent - 0.02  # /proc counts in clock ticks
