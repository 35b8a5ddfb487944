-- Bench only (bench/bench_scheduler.py): synthetic mission snapshots i in [start, stop],
-- spread over %(users)s users. Every %(due_every)s-th is due (nextRunAt within the hour
-- before %(now)s); the rest are due within the next 30 days, every 10th of them paused;
-- every 200th writes a '+02:00' offset instead of 'Z'; every 7th is legacy (no agentId).
INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record, last_applied_at)
SELECT 'bench-u' || (i %% %(users)s), 'bench-m' || i,
       jsonb_build_object(
           'id', 'bench-m' || i,
           'title', 'Mission ' || i,
           'objective', 'Summarise the notes of the week and propose three next steps, #' || i,
           'state', CASE WHEN i %% %(due_every)s <> 0 AND i %% 10 = 0 THEN 'paused'
                         ELSE 'active' END,
           'cadence', jsonb_build_object('kind', 'interval', 'everyMinutes', 60 * (1 + i %% 24)),
           'agentId', CASE WHEN i %% 7 = 0 THEN NULL ELSE 'bench-a' || (i %% 3) END,
           'nextRunAt', CASE WHEN i %% 200 = 7
                THEN to_char((t.at AT TIME ZONE 'UTC') + interval '2 hours',
                             'YYYY-MM-DD"T"HH24:MI:SS.MS') || '+02:00'
                ELSE to_char(t.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END,
           'iterations', '[]'::jsonb,
           'createdAt', '2026-01-01T00:00:00.000Z'),
       %(now)s::timestamptz
FROM generate_series(%(start)s::int, %(stop)s::int) AS i,
     LATERAL (SELECT CASE WHEN i %% %(due_every)s = 0
                  THEN %(now)s::timestamptz - (i %% 3600) * interval '1 second'
                  ELSE %(now)s::timestamptz + interval '2 minutes'
                       + ((i::bigint * 7919) %% (30 * 86400)) * interval '1 second' END) AS t(at)
