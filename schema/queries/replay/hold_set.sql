-- Set before the build snapshot is taken, so keep_from <= that snapshot's xmin: every
-- journal row the swap will apply (not visible in the build snapshot) is kept.
INSERT INTO mana_ai.replay_hold (name, keep_from, pid)
VALUES ('replay', pg_snapshot_xmin(pg_current_snapshot()), pg_backend_pid())
ON CONFLICT (name) DO UPDATE
    SET keep_from = EXCLUDED.keep_from, pid = EXCLUDED.pid, started_at = now()
