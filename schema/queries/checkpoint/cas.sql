-- Compare-and-set: only the worker that read `version`, and only while `epoch` is the newest
-- leader epoch, may move the checkpoint; anyone else gets SQLSTATE MA001 (version) or MA002
-- (deposed) and its transaction rolls back.
SELECT mana_ai.advance_checkpoint(%(name)s, %(version)s, %(applied_below)s::xid8, %(bootstrapped)s,
                                  %(epoch)s::bigint)
