-- The demo's view: which of these written-back iterations are in their mission's snapshot.
SELECT w.iteration_id
FROM unnest(%(users)s::text[], %(missions)s::text[], %(iterations)s::text[])
     AS w(user_id, mission_id, iteration_id)
JOIN mana_ai.mission_snapshots AS s
  ON s.user_id = w.user_id AND s.mission_id = w.mission_id
WHERE jsonb_typeof(s.record->'iterations') = 'array'
  AND EXISTS (
      SELECT 1 FROM jsonb_array_elements(s.record->'iterations') AS it
      WHERE it->>'id' = w.iteration_id
  )
