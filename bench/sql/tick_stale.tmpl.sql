-- Bench only, upstream's polling tick, step 1, for one of its two tables: every (user,
-- record) of the log whose newest row is newer than its snapshot's cursor. A GROUP BY over
-- all of the table's rows. {snapshots}: the baseline's snapshot table, {key}: its record
-- column; the log's table name is a parameter.
WITH latest AS (
    SELECT user_id, record_id, max(created_at) AS max_ts
    FROM public.sync_changes
    WHERE app_id = 'ai' AND table_name = %(table_name)s
    GROUP BY user_id, record_id
)
SELECT l.user_id, l.record_id, coalesce(s.last_applied_at, 'epoch'::timestamptz) AS since
FROM latest l
LEFT JOIN {snapshots} s ON s.user_id = l.user_id AND s.{key} = l.record_id
WHERE l.max_ts > coalesce(s.last_applied_at, 'epoch'::timestamptz)
