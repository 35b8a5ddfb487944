INSERT INTO mana_ai.quarantine (change_id, reason, raw)
SELECT change_id::uuid, reason, raw::jsonb
FROM unnest(%(ids)b::text[], %(reasons)b::text[], %(raws)b::text[]) AS x(change_id, reason, raw)
ON CONFLICT (change_id) DO NOTHING
RETURNING reason
