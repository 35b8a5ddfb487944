-- A gate closed between the claim and this attempt (see consumer/decisions.hold_at_attempt):
-- the occurrence is `released`, if this attempt still holds the lease. The attempt did not
-- run, so it is not counted; the earlier ones and their last error stay. No attempt wrote an
-- iteration (a write ends the occurrence `done`), so nothing runs twice: the mission is due
-- as it is, the due query offers it again and ledger/claim.sql takes the row back.
UPDATE mana_ai.dispatch_ledger
SET state = 'released', attempts = attempts - 1, wake_at = NULL, finished_at = now(),
    outcome = %(outcome)s
WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
  AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
RETURNING attempts
