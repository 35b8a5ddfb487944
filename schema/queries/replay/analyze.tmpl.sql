-- Planner statistics for the shadow before it goes live: the scheduler's due query should
-- not run on a table the planner believes empty until autovacuum comes by.
ANALYZE {clocks}, {missions}, {due}, {agents}
