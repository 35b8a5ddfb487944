UPDATE mana_ai.dispatch_ledger
SET finished_at = now(), outcome = %(outcome)s
WHERE user_id = %(user_id)s AND mission_id = %(mission_id)s AND next_run_at = %(next_run_at)s
