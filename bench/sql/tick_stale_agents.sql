-- Bench only, upstream's polling tick, step 1 (agents): every (user, record) of the log whose
-- newest row is newer than its snapshot's cursor. A GROUP BY over all of the table's rows.
WITH latest AS (
    SELECT user_id, record_id AS agent_id, max(created_at) AS max_ts
    FROM public.sync_changes
    WHERE app_id = 'ai' AND table_name = 'agents'
    GROUP BY user_id, record_id
)
SELECT l.user_id, l.agent_id, coalesce(s.last_applied_at, 'epoch'::timestamptz) AS since
FROM latest l
LEFT JOIN bench_tick.agent_snapshots s ON s.user_id = l.user_id AND s.agent_id = l.agent_id
WHERE l.max_ts > coalesce(s.last_applied_at, 'epoch'::timestamptz)
