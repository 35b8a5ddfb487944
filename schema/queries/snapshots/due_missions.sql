-- Due missions: the due index (mana_ai.mission_due, nextRunAt as a UTC instant) read up to
-- %(now)s, then each one's snapshot by primary key (OFFSET 0 keeps the lookup a lookup:
-- otherwise the planner may scan every active snapshot through the seed's partial index).
-- Upstream's due rule, restated on the record: state 'active' and
-- record->>'deletedAt' IS NULL (a deletedAt of "" or false takes the mission out too).
-- d.due_at is the occurrence's instant. Occurrences already in the dispatch ledger
-- (compared as instants, so another spelling of the same instant is the same occurrence)
-- are not candidates, unless released (a gate closed before their run: decided again). The due index is read (and locked) before the snapshots: the order
-- in which the projector writes them and replay locks them.
SELECT m.user_id, m.mission_id, m.next_run_at, m.body, d.due_at
FROM mana_ai.mission_due d
CROSS JOIN LATERAL (
    SELECT s.user_id, s.mission_id, s.record->>'nextRunAt' AS next_run_at,
           s.record::text AS body
    FROM mana_ai.mission_snapshots s
    WHERE s.user_id = d.user_id AND s.mission_id = d.mission_id
      AND s.record->>'state' = 'active'
      AND s.record->>'deletedAt' IS NULL
    OFFSET 0
) m
WHERE d.due_at <= %(now)s
  AND NOT EXISTS (
      SELECT 1 FROM mana_ai.dispatch_ledger l
      WHERE l.user_id = d.user_id AND l.mission_id = d.mission_id AND l.due_at = d.due_at
        AND l.state <> 'released')
