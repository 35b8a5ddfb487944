-- Candidate due missions through the seed's partial index idx_mission_snapshots_due
-- (state = 'active', range on the nextRunAt text). Text order equals instant order only for
-- UTC spellings, so: %(exact)s is now (+ a little slack) as UTC ISO text, which finds every
-- due UTC or negative-offset string; %(wide)s is now + 14 h (+ slack), which a positive
-- offset ('+hh:mm', at most +14:00) needs. The caller parses the instants and keeps only
-- what is really due. Occurrences already in the dispatch ledger (compared as instants, so
-- another spelling of the same instant is the same occurrence) are not candidates.
SELECT m.user_id, m.mission_id, m.record->>'nextRunAt', m.record::text
FROM mana_ai.mission_snapshots m
WHERE m.record->>'state' = 'active'
  AND m.record->>'nextRunAt' <= %(wide)s
  AND (m.record->>'nextRunAt' <= %(exact)s OR strpos(m.record->>'nextRunAt', '+') > 0)
  AND coalesce(m.record->>'deletedAt', '') = ''
  AND NOT EXISTS (
      SELECT 1 FROM mana_ai.dispatch_ledger l
      WHERE l.user_id = m.user_id AND l.mission_id = m.mission_id
        AND l.due_at = mana_ai.instant(m.record->>'nextRunAt'))
