-- Compare-and-set: only the worker that read `version` may move the checkpoint; anyone
-- else gets SQLSTATE MA001 and its transaction rolls back.
SELECT mana_ai.advance_checkpoint(%(name)s, %(version)s, %(applied_below)s::xid8, %(bootstrapped)s)
