-- The whole log of our two tables, record by record, through mana-sync's
-- (table_name, record_id, created_at) index: used by bootstrap and replay.
SELECT c.id::text, c.user_id, c.table_name, c.record_id, c.op,
       c.data::text, c.field_meta::text, c.created_at
FROM public.sync_changes c
WHERE c.table_name IN ('aiMissions', 'agents') AND c.app_id = 'ai'
ORDER BY c.table_name, c.record_id, c.created_at
