-- Bench only: the rest of the due index by a plain timestamptz cast. The loader writes
-- nextRunAt only in well-formed ISO spellings ('Z' or '+02:00', milliseconds), which the
-- cast reads as the same instant as the migration's parser; no subtransaction per row, so
-- it takes seconds where the parser takes a minute per million.
INSERT INTO mana_ai.mission_due (user_id, mission_id, due_at)
SELECT user_id, mission_id, (record->>'nextRunAt')::timestamptz
FROM mana_ai.mission_snapshots
WHERE record->>'state' = 'active' AND record->>'deletedAt' IS NULL
  AND record->>'nextRunAt' IS NOT NULL
ON CONFLICT (user_id, mission_id) DO NOTHING
