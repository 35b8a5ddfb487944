-- Drops the given tables if they exist, in one statement (one bound on its lock waits): a
-- shadow (an aborted run), the retired live tables (a swap whose drop gave up), or both.
DROP TABLE IF EXISTS {tables}
