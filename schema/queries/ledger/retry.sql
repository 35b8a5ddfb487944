-- An attempt ended without writing, if it still holds the lease. %(final)s: the occurrence
-- is `failed` for good; else it goes back to `claimed` and may start again after
-- %(delay)s seconds, on any process. %(refund)s = 1 gives the attempt back (shutdown: the
-- run was stopped, it did not fail).
UPDATE mana_ai.dispatch_ledger
SET state = CASE WHEN %(final)s THEN 'failed' ELSE 'claimed' END,
    wake_at = CASE WHEN %(final)s THEN NULL
                   ELSE now() + make_interval(secs => %(delay)s) END,
    finished_at = CASE WHEN %(final)s THEN now() END,
    outcome = CASE WHEN %(final)s THEN %(outcome)s END,
    attempts = attempts - %(refund)s,
    last_error = %(error)s,
    lease_owner = CASE WHEN %(final)s THEN lease_owner END  -- who tried last, when it ends
WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
  AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
RETURNING attempts
