"""Helpers shared by the tests (no fixtures here: those are in conftest.py)."""

from __future__ import annotations

import subprocess
import sys

import psycopg


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m consumer ARGS` in a subprocess; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def catalog(dsn: str) -> dict[str, object]:
    """Everything schema-shaped in mana_ai and public.sync_changes, as comparable data."""
    with psycopg.connect(dsn) as conn:
        q = conn.execute
        columns = q(
            """SELECT table_schema, table_name, column_name, data_type, is_nullable,
                      column_default
               FROM information_schema.columns
               WHERE table_schema = 'mana_ai' OR (table_schema = 'public'
                     AND table_name = 'sync_changes')
               ORDER BY 1, 2, ordinal_position"""
        ).fetchall()
        indexes = q(
            """SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
               WHERE schemaname = 'mana_ai' OR tablename = 'sync_changes' ORDER BY 1, 2, 3"""
        ).fetchall()
        constraints = q(
            """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace IN ('mana_ai'::regnamespace,
                 'public'::regnamespace) ORDER BY 1, 2"""
        ).fetchall()
        policies = q(
            """SELECT schemaname, tablename, policyname, cmd, qual, with_check FROM pg_policies
               ORDER BY 1, 2, 3"""
        ).fetchall()
        rls = q(
            """SELECT c.oid::regclass::text, c.relrowsecurity, c.relforcerowsecurity
               FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace IN
                 ('mana_ai'::regnamespace, 'public'::regnamespace) ORDER BY 1"""
        ).fetchall()
        triggers = q(
            """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
               WHERE NOT tgisinternal ORDER BY 1, 2"""
        ).fetchall()
    return {
        "columns": columns, "indexes": indexes, "constraints": constraints,
        "policies": policies, "rls": rls, "triggers": triggers,
    }
