-- Bench only, upstream's polling tick, step 4: the due query (listDueMissions).
SELECT user_id, record
FROM bench_tick.mission_snapshots
WHERE record->>'state' = 'active'
  AND record->>'nextRunAt' IS NOT NULL
  AND record->>'nextRunAt' <= %(now)s
  AND (record->>'deletedAt') IS NULL
