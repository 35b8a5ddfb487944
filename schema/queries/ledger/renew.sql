-- Extend a live lease. No row: the lease is no longer ours (it expired and another worker
-- took the occurrence, or the occurrence ended), and the run must stop.
UPDATE mana_ai.dispatch_ledger
SET wake_at = now() + make_interval(secs => %(lease)s)
WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND due_at = %(due_at)s
  AND state = 'running' AND lease_owner = %(owner)s AND attempts = %(attempt)s
