-- When the next occurrence becomes runnable (a retry's backoff ends, a lease expires).
SELECT min(wake_at) FROM mana_ai.dispatch_ledger WHERE state IN ('claimed', 'running')
