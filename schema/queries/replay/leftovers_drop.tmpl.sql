-- Drops what an earlier replay left behind, in one statement (one bound on its lock waits):
-- its shadow tables (a run that did not finish) and the retired live tables (a swap whose
-- drop gave up).
DROP TABLE IF EXISTS {clocks}, {missions}, {due}, {agents},
                     {old_clocks}, {old_missions}, {old_due}, {old_agents}
