-- A worker takes up to %(limit)s runnable occurrences: `claimed` ones whose next attempt has
-- come, and `running` ones whose lease expired (their process died or stalled). SKIP LOCKED
-- lets every process take at once without waiting on the others' rows. Each row taken
-- starts a new attempt under this worker's lease. Returns what the run needs: the
-- occurrence, the attempt (the lease's fence), the decision's trace, and the mission as
-- projected now (the worker then finds its agent as the scheduler does, and checks the
-- gates again: consumer/worker.py).
-- Not the occurrences this worker still runs (the busy_ arrays): their lease may have run out
-- while the database was away, but their attempt lives and renews it when it is back;
-- taking one again would call the planner a second time beside it.
WITH c AS (
    SELECT l.user_id, l.mission_id, l.due_at, l.state AS was, l.lease_owner AS old_owner
    FROM mana_ai.dispatch_ledger l
    WHERE l.state IN ('claimed', 'running') AND l.wake_at <= now()
      AND (l.user_id, l.mission_id, l.due_at) NOT IN (
          SELECT * FROM unnest(%(busy_users)s::text[], %(busy_missions)s::text[],
                               %(busy_due_ats)s::timestamptz[]))
    ORDER BY l.wake_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE mana_ai.dispatch_ledger l
SET state = 'running',
    attempts = l.attempts + 1,
    lease_owner = %(owner)s,
    wake_at = now() + make_interval(secs => %(lease)s),
    started_at = coalesce(l.started_at, now()),
    last_error = CASE WHEN c.was = 'running'
                      THEN 'lease of ' || coalesce(c.old_owner, '?') || ' expired'
                      ELSE l.last_error END
FROM c
WHERE l.user_id = c.user_id AND l.mission_id = c.mission_id AND l.due_at = c.due_at
RETURNING l.user_id, l.mission_id, l.due_at, l.next_run_at, l.agent_id, l.attempts,
          l.trace_id, l.parent_span, c.was,
          (SELECT m.record::text FROM mana_ai.mission_snapshots m
            WHERE m.user_id = l.user_id AND m.mission_id = l.mission_id)
