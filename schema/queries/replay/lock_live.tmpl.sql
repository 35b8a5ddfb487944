-- In the order the projector touches them (clocks, due index, missions, agents): a
-- projector transaction holding one of them never waits for one we already hold.
LOCK TABLE {clocks}, {due}, {missions}, {agents} IN {mode} MODE
