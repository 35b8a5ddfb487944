-- Bench only, upstream's polling tick, step 3: store the folded record and its new cursor.
INSERT INTO bench_tick.mission_snapshots (user_id, mission_id, record, last_applied_at, updated_at)
VALUES (%(user_id)s, %(record_id)s, %(record)s, %(cursor)s, now())
ON CONFLICT (user_id, mission_id) DO UPDATE SET
    record = EXCLUDED.record, last_applied_at = EXCLUDED.last_applied_at, updated_at = now()
