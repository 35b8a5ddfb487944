-- The leader records a pass's `ran` decisions as `claimed` occurrences, in one statement (one
-- commit). Returns the rows claimed: an occurrence already in the ledger (decided before,
-- under another spelling of the same instant, or by a deposed leader) is not claimed again,
-- unless an attempt released it (a gate closed before it ran): that row is claimed again
-- under this decision, its attempts and last error kept.
-- Inserted in key order, so two writers of overlapping sets wait instead of deadlocking.
INSERT INTO mana_ai.dispatch_ledger
    (user_id, mission_id, due_at, next_run_at, decision, reason, agent_id, trace_id,
     parent_span, state, wake_at)
SELECT user_id, mission_id, due_at, next_run_at, 'ran', reason, agent_id, trace_id,
       parent_span, 'claimed', now()
FROM unnest(%(users)s::text[], %(missions)s::text[], %(due_ats)s::timestamptz[],
            %(next_run_ats)s::text[], %(reasons)s::text[], %(agents)s::text[],
            %(trace_ids)s::text[], %(parent_spans)s::text[])
     AS x(user_id, mission_id, due_at, next_run_at, reason, agent_id, trace_id, parent_span)
ORDER BY user_id, mission_id, due_at
ON CONFLICT (user_id, mission_id, due_at) DO UPDATE
SET state = 'claimed', wake_at = now(), decision = 'ran', reason = excluded.reason,
    next_run_at = excluded.next_run_at, agent_id = excluded.agent_id,
    trace_id = excluded.trace_id, parent_span = excluded.parent_span,
    started_at = NULL, finished_at = NULL, outcome = NULL, lease_owner = NULL
WHERE mana_ai.dispatch_ledger.state = 'released'
RETURNING user_id, mission_id, due_at
