-- Claim a pass's `ran` occurrences in one statement (one commit, one WAL flush). Returns the
-- rows this caller inserted: the claims it won. Inserted in key order, so two schedulers
-- claiming overlapping sets wait on each other instead of deadlocking.
INSERT INTO mana_ai.dispatch_ledger (user_id, mission_id, next_run_at, decision, reason, agent_id)
SELECT user_id, mission_id, next_run_at, decision, reason, agent_id
FROM unnest(%(users)s::text[], %(missions)s::text[], %(next_run_ats)s::text[],
            %(decisions)s::text[], %(reasons)s::text[], %(agents)s::text[])
     AS x(user_id, mission_id, next_run_at, decision, reason, agent_id)
ORDER BY user_id, mission_id, next_run_at
ON CONFLICT (user_id, mission_id, next_run_at) DO NOTHING
RETURNING user_id, mission_id, next_run_at
