-- Bench only (bench_tick): the first n generated log rows again, under new record ids
-- (suffix) and `shift` hours later: building JSON in SQL is the slow part of a load.
INSERT INTO public.sync_changes
    (app_id, table_name, record_id, user_id, op, data, field_meta, client_id, created_at)
SELECT app_id, table_name, record_id || %(suffix)s, user_id, op, data, field_meta,
       'bench-copy', created_at + %(shift)s * interval '1 hour'
FROM (SELECT * FROM public.sync_changes WHERE client_id = 'bench-loader'
      ORDER BY created_at LIMIT %(n)s) AS base
