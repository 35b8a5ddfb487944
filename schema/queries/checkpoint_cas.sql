-- Compare-and-set: only the worker that read `version` may move the checkpoint.
UPDATE mana_ai.checkpoint
SET applied_below = GREATEST(applied_below, %(applied_below)s::xid8),
    bootstrapped = bootstrapped OR %(bootstrapped)s,
    version = version + 1,
    updated_at = now()
WHERE name = %(name)s AND version = %(version)s
RETURNING version
