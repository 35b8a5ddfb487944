-- In the order the projector touches them (clocks, missions, agents): a projector
-- transaction holding one of them never waits for one we already hold.
LOCK TABLE {clocks}, {missions}, {agents} IN {mode} MODE
