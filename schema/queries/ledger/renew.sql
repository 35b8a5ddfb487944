-- Extend a live lease. `renewed` false: the lease is no longer extended; then `finished`
-- says whether this attempt itself ended the occurrence (its write-back committed `done`,
-- or its end was recorded, while the renewal was under way: nothing to stop), else the
-- lease was lost (it expired and another worker took the occurrence) and the run must stop.
WITH renewed AS (
    UPDATE mana_ai.dispatch_ledger
    SET wake_at = now() + make_interval(secs => %(lease)s)
    WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
      AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM renewed) AS renewed,
       EXISTS (SELECT 1 FROM mana_ai.dispatch_ledger
               WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s
                 AND due_at = %(due_at)s AND state IN ('done', 'failed')
                 AND lease_owner = %(owner)s AND attempts = %(attempt)s) AS finished
