-- Bench only: the due index of the first %(n)s snapshots in heap order, by the migration's
-- SQL parser (mana_ai.mission_due_at), as the migration's backfill fills it.
INSERT INTO mana_ai.mission_due (user_id, mission_id, due_at)
SELECT user_id, mission_id, due_at
FROM (SELECT user_id, mission_id, mana_ai.mission_due_at(record) AS due_at
      FROM mana_ai.mission_snapshots LIMIT %(n)s) AS s
WHERE due_at IS NOT NULL
