-- The next few nextRunAt strings after %(after)s in text order, through the seed's
-- idx_mission_snapshots_due; the caller parses them and sleeps until the earliest instant.
SELECT m.record->>'nextRunAt'
FROM mana_ai.mission_snapshots m
WHERE m.record->>'state' = 'active'
  AND m.record->>'nextRunAt' > %(after)s
  AND coalesce(m.record->>'deletedAt', '') = ''
ORDER BY m.record->>'nextRunAt'
LIMIT %(limit)s
