-- Drops four tables if they exist: the shadow (an aborted run) or the retired ones.
DROP TABLE IF EXISTS {clocks}, {missions}, {due}, {agents}
