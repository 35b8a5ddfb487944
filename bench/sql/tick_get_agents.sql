-- Bench only, upstream's polling tick: the pair's stored snapshot, the fold's starting point.
SELECT record, last_applied_at FROM bench_tick.agent_snapshots
WHERE user_id = %(user_id)s AND agent_id = %(record_id)s
