-- Bench only, upstream's polling tick: a deleted record loses its snapshot.
DELETE FROM bench_tick.agent_snapshots WHERE user_id = %(user_id)s AND agent_id = %(record_id)s
