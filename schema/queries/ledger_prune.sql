-- Forget finished occurrences older than %(before)s whose mission has moved on (its current
-- nextRunAt is another string, or it is gone). The current occurrence is never forgotten:
-- that would let it run a second time.
DELETE FROM mana_ai.dispatch_ledger l
WHERE l.decided_at < %(before)s
  AND l.finished_at IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM mana_ai.mission_snapshots m
      WHERE m.user_id = l.user_id AND m.mission_id = l.mission_id
        AND m.record->>'nextRunAt' = l.next_run_at)
