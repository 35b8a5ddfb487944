-- Quarantine one row that could not even be read or applied on its own: the raw row is
-- taken from the log on the server (to_jsonb), so nothing of it passes through the
-- driver; a row gone from the log is recorded by its id alone.
INSERT INTO mana_ai.quarantine (change_id, reason, raw)
SELECT %(id)s::uuid, %(reason)s,
       coalesce((SELECT to_jsonb(c) FROM public.sync_changes c WHERE c.id = %(id)s::uuid),
                jsonb_build_object('id', %(id)s::text))
ON CONFLICT (change_id) DO NOTHING
RETURNING reason
