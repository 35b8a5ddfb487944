-- Bench only: start the baseline where our projection stands, so both take in the same new
-- rows. Records are our merged ones, cursors our last_applied_at (the newest created_at
-- folded, as upstream's cursor). Upstream would also keep per-field stamps under
-- __fieldMeta; without them every later field wins, which for the benchmark's rows
-- (stamped later than everything before) is the same outcome at the same cost.
TRUNCATE bench_tick.mission_snapshots, bench_tick.agent_snapshots;
INSERT INTO bench_tick.mission_snapshots (user_id, mission_id, record, last_applied_at)
SELECT user_id, mission_id, record, last_applied_at FROM mana_ai.mission_snapshots;
INSERT INTO bench_tick.agent_snapshots (user_id, agent_id, record, last_applied_at)
SELECT user_id, agent_id, record, last_applied_at FROM mana_ai.agent_snapshots;
ANALYZE bench_tick.mission_snapshots;
ANALYZE bench_tick.agent_snapshots;
