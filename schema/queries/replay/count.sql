-- Rows to fold, for progress: an index-only count on mana-sync's
-- (table_name, record_id, created_at) index (app_id is not in it; other apps using the
-- same table names would only make the estimate high).
SELECT count(*) FROM public.sync_changes WHERE table_name IN ('aiMissions', 'agents')
