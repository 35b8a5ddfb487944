-- Bench only: due index rows where the parser and the cast would disagree (must be 0).
SELECT count(*)
FROM mana_ai.mission_due d
JOIN mana_ai.mission_snapshots s USING (user_id, mission_id)
WHERE d.due_at IS DISTINCT FROM (s.record->>'nextRunAt')::timestamptz
