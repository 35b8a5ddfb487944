-- The given missions, when active and not yet ledgered for their current nextRunAt: the
-- missions the projection just changed, and those whose nextRunAt carries a positive UTC
-- offset (their text sorts after their instant, past the due query's text bound).
SELECT m.user_id, m.mission_id, m.record->>'nextRunAt', m.record::text
FROM unnest(%(users)s::text[], %(missions)s::text[]) AS k(user_id, mission_id)
JOIN mana_ai.mission_snapshots m USING (user_id, mission_id)
WHERE m.record->>'state' = 'active'
  AND m.record->>'nextRunAt' IS NOT NULL
  AND coalesce(m.record->>'deletedAt', '') = ''
  AND NOT EXISTS (
      SELECT 1 FROM mana_ai.dispatch_ledger l
      WHERE l.user_id = m.user_id AND l.mission_id = m.mission_id
        AND l.due_at = mana_ai.instant(m.record->>'nextRunAt'))
