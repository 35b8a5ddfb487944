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
