-- {table} is mission_snapshots or agent_snapshots (or a replay shadow); {key} its id column.
-- RETURNING tells new from updated rows: xmax is 0 only on a fresh insert. Arrays are
-- bound in binary format, which skips the per-element quoting of text arrays.
INSERT INTO {table} (user_id, {key}, record, last_applied_at, updated_at)
SELECT user_id, record_id, record::jsonb, last_applied_at, now()
FROM unnest(%(users)b::text[], %(records)b::text[], %(bodies)b::text[], %(applied)b::timestamptz[])
     AS x(user_id, record_id, record, last_applied_at)
ON CONFLICT (user_id, {key}) DO UPDATE
    SET record = EXCLUDED.record, last_applied_at = EXCLUDED.last_applied_at, updated_at = now()
RETURNING (xmax = 0) AS inserted
