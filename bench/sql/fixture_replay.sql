-- Bench only (bench/bench_replay.py): log rows %(start)s .. %(stop)s of a synthetic
-- history, 10 rows per record (an insert, then updates), 4 missions to 1 agent, 2000 users,
-- field_meta in both shapes, 1 record in 50 deleted by its last row.
INSERT INTO public.sync_changes
    (app_id, table_name, record_id, user_id, op, data, field_meta, client_id, created_at)
SELECT 'ai', t.table_name, t.record_id, t.user_id, t.op, d.data,
       (SELECT jsonb_object_agg(k, CASE WHEN g.i %% 3 = 0 THEN to_jsonb(t.stamp)
                                        ELSE jsonb_build_object('at', t.stamp, 'origin', 'user',
                                             'actor', jsonb_build_object('kind', 'user')) END)
        FROM jsonb_object_keys(d.data) AS k),
       'bench-client-' || (g.i %% 7), t.created_at
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS g(i)
CROSS JOIN LATERAL (
    SELECT (g.i - 1) / 10 AS rec, (g.i - 1) %% 10 AS k
) AS r
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.rec %% 5 = 0 THEN 'agents' ELSE 'aiMissions' END AS table_name,
           md5('record' || r.rec)::uuid::text AS record_id,
           'user-' || (r.rec %% 2000) AS user_id,
           CASE WHEN r.k = 0 THEN 'insert'
                WHEN r.k = 9 AND r.rec %% 50 = 7 THEN 'delete' ELSE 'update' END AS op,
           -- rows of a record a few minutes apart, records interleaved in time
           timestamptz '2025-01-01 00:00:00+00' + (r.rec %% 100000) * interval '1 second'
               + r.k * interval '7 minutes' AS created_at,
           to_char(timestamptz '2025-01-01 00:00:00+00' + (r.rec %% 100000) * interval '1 second'
               + r.k * interval '7 minutes', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS stamp
) AS t
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN t.table_name = 'agents' AND r.k = 0 THEN jsonb_build_object(
            'name', 'Agent ' || r.rec, 'role', 'Researcher', 'state', 'active',
            'systemPrompt', 'enc:1:' || md5(r.rec::text) || md5('p' || r.rec),
            'memory', 'Remembers the weekly report format and the team''s naming rules.',
            'maxConcurrentMissions', 2, 'maxTokensPerDay', 50000, 'createdAt', t.stamp)
        WHEN t.table_name = 'agents' THEN jsonb_build_object(
            'memory', 'Notes after run ' || r.k || ': prefers short summaries.',
            'state', CASE WHEN r.k %% 4 = 3 THEN 'paused' ELSE 'active' END,
            'updatedAt', t.stamp)
        WHEN r.k = 0 THEN jsonb_build_object(
            'title', 'Mission ' || r.rec, 'objective', 'Summarise the news on topic ' || r.rec,
            'state', 'active', 'cadence', jsonb_build_object('kind', 'interval', 'everyMinutes', 60),
            'nextRunAt', t.stamp, 'agentId', md5('record' || (r.rec / 5 * 5))::uuid::text,
            'inputs', jsonb_build_array(jsonb_build_object('kind', 'note', 'id', 'n' || r.rec)),
            'iterations', '[]'::jsonb, 'createdAt', t.stamp)
        WHEN r.k %% 3 = 0 THEN jsonb_build_object(
            'iterations', jsonb_build_array(jsonb_build_object(
                'id', 'it-' || r.rec || '-' || r.k, 'startedAt', t.stamp, 'finishedAt', t.stamp,
                'summary', 'Collected three sources and drafted a summary.',
                'overallStatus', 'approved', 'source', 'server', 'plan', '[]'::jsonb)))
        WHEN r.k %% 3 = 1 THEN jsonb_build_object('nextRunAt', t.stamp, 'state', 'active')
        ELSE jsonb_build_object('title', 'Mission ' || r.rec || ' v' || r.k,
                                'objective', 'Summarise the news on topic ' || r.rec || ' again')
    END AS data
) AS d
