-- The whole log of our two tables, record by record, through mana-sync's
-- (table_name, record_id, created_at) index: used by bootstrap and replay.
-- created_at as in journal/read.sql: NULL outside what a Python datetime holds (the
-- driver cannot load 'infinity'), with its text last.
SELECT c.id::text, c.user_id, c.table_name, c.record_id, c.op,
       c.data::text, c.field_meta::text,
       CASE WHEN c.created_at BETWEEN '0001-01-03 00:00:00+00' AND '9999-12-29 00:00:00+00'
            THEN c.created_at END,
       c.created_at::text
FROM public.sync_changes c
WHERE c.table_name IN ('aiMissions', 'agents') AND c.app_id = 'ai'
ORDER BY c.table_name, c.record_id, c.created_at
