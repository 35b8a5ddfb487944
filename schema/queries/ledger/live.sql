-- Live occurrences per (user, agent) of the given users: queued (`claimed`) and running,
-- on every process. The concurrency gate counts these. Served by
-- idx_dispatch_ledger_live_agent.
SELECT l.user_id, l.agent_id, count(*)::int
FROM mana_ai.dispatch_ledger l
WHERE l.state IN ('claimed', 'running')
  AND l.user_id = ANY(%(users)s::text[])
  AND l.agent_id IS NOT NULL
GROUP BY l.user_id, l.agent_id
