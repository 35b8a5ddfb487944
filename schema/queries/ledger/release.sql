-- A gate closed between the claim and this attempt (the agent paused, archived, gone or
-- out of budget, or the mission moved to another instant): the occurrence leaves the
-- ledger, if this attempt still holds the lease. No attempt wrote an iteration (a write
-- ends the occurrence `done`), so nothing runs twice: the mission is due again as it is,
-- and the scheduler decides it afresh, as upstream's next tick would.
DELETE FROM mana_ai.dispatch_ledger
WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
  AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
RETURNING attempts
