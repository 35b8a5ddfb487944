-- The occurrence is done, if this attempt still holds the lease. The runner runs this in
-- the transaction that inserts the iteration's write-back row: no row means the lease was
-- lost, and the caller rolls the write-back back.
UPDATE mana_ai.dispatch_ledger
SET state = 'done', outcome = %(outcome)s, iteration_id = %(iteration_id)s,
    finished_at = now(), wake_at = NULL  -- lease_owner stays: who ran it
WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
  AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
RETURNING attempts
