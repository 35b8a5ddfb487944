-- One chunk of the synthetic catch-up backlog: rows lo..hi of `total`, over `records`
-- records (the first `missions` are missions, the rest agents), `users` users. Row i belongs
-- to record (i-1) mod records, so the first `records` rows create every record and the rest
-- are edits; in the last round 1 agent in 97 is deleted. field_meta alternates the four
-- spellings: string/object x "Z, 3 digits"/"+00:00, 6 digits".
WITH g AS (
    SELECT i, (i - 1) %% %(records)s AS r,
           timestamptz '2025-01-01 00:00:00+00' + i * interval '1 millisecond' AS created_at
    FROM generate_series(%(lo)s::int, %(hi)s::int) AS i
), k AS (
    SELECT g.*,
           r < %(missions)s AS is_mission,
           CASE WHEN i <= %(records)s THEN 'insert'
                WHEN r >= %(missions)s AND r %% 97 = 0 AND i > %(total)s - %(records)s
                    THEN 'delete'
                ELSE 'update' END AS op,
           CASE WHEN i %% 2 = 0
                THEN to_char((created_at - interval '3 ms') AT TIME ZONE 'UTC',
                             'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                ELSE to_char((created_at - interval '3 ms') AT TIME ZONE 'UTC',
                             'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') END AS stamp
    FROM g
), d AS (
    SELECT k.*,
        CASE
        WHEN op = 'delete' THEN NULL
        WHEN op = 'insert' AND is_mission THEN jsonb_build_object(
            'title', 'Weekly competitor scan #' || r,
            'objective', 'Summarise new competitor announcements; flag pricing changes.',
            'state', 'active',
            'agentId', 'agent-' || (%(missions)s + r %% (%(records)s - %(missions)s)),
            'cadence', jsonb_build_object('kind', 'interval', 'everyMinutes', 60),
            'nextRunAt', stamp, 'createdAt', stamp, 'updatedAt', stamp)
        WHEN op = 'insert' THEN jsonb_build_object(
            'name', 'Agent ' || r, 'role', 'Recherche', 'state', 'active',
            'maxConcurrentMissions', 2, 'systemPrompt', 'enc:1:' || md5(r::text),
            'memory', 'enc:1:' || md5(i::text), 'createdAt', stamp)
        WHEN is_mission THEN jsonb_build_object(
            'nextRunAt', stamp, 'updatedAt', stamp, 'iteration', i / %(records)s,
            'state', CASE WHEN i %% 10 = 0 THEN 'paused' ELSE 'active' END)
        ELSE jsonb_build_object(
            'state', CASE WHEN i %% 7 = 0 THEN 'paused' ELSE 'active' END,
            'memory', 'enc:1:' || md5(i::text), 'updatedAt', stamp)
        END AS data
    FROM k
)
INSERT INTO public.sync_changes
    (app_id, table_name, record_id, user_id, op, data, field_meta, client_id, created_at)
SELECT 'ai',
       CASE WHEN is_mission THEN 'aiMissions' ELSE 'agents' END,
       CASE WHEN is_mission THEN 'mission-' ELSE 'agent-' END || r,
       'user-' || (r %% %(users)s),
       op, data,
       coalesce(CASE WHEN i %% 4 < 2
           THEN (SELECT jsonb_object_agg(key, stamp) FROM jsonb_object_keys(data) key)
           ELSE (SELECT jsonb_object_agg(key, jsonb_build_object(
                     'at', stamp,
                     'actor', jsonb_build_object('kind', 'user', 'principalId',
                                                 'user-' || (r %% %(users)s)),
                     'origin', 'user'))
                 FROM jsonb_object_keys(data) key) END, '{}'::jsonb),
       'bench-loader', created_at
FROM d
