-- Bench only, upstream's polling tick, step 2 (aiMissions): one pair's rows since its cursor.
SELECT op, data, field_meta, created_at
FROM public.sync_changes
WHERE app_id = 'ai' AND table_name = 'aiMissions'
  AND user_id = %(user_id)s AND record_id = %(record_id)s AND created_at > %(since)s
ORDER BY created_at
