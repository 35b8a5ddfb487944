-- Forget finished (or released) occurrences that ended before %(before)s and whose mission
-- has moved on (its current nextRunAt is another instant, or it is gone). The current
-- occurrence is never forgotten, whatever the mission's state: that would let it run a
-- second time (or, released, start its attempts over). Its instant is read as the due
-- index reads it (mana_ai.next_run_instant, migration 0011).
DELETE FROM mana_ai.dispatch_ledger l
WHERE l.state IN ('done', 'failed', 'released')
  AND l.finished_at < %(before)s
  AND NOT EXISTS (
      SELECT 1 FROM mana_ai.mission_snapshots m
      WHERE m.user_id = l.user_id AND m.mission_id = l.mission_id
        AND mana_ai.next_run_instant(m.record->>'nextRunAt') = l.due_at)
