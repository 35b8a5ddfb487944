-- Bench only (bench/bench_scheduler.py): three agents per synthetic user, no limits reached.
INSERT INTO mana_ai.agent_snapshots (user_id, agent_id, record, last_applied_at)
SELECT 'bench-u' || u, 'bench-a' || a,
       jsonb_build_object('id', 'bench-a' || a, 'name', 'Agent ' || a, 'role', 'Researcher',
                          'state', 'active', 'maxConcurrentMissions', 100,
                          'maxTokensPerDay', 1000000,
                          'systemPrompt', 'enc:1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'),
       now()
FROM generate_series(0, %(users)s::int - 1) AS u, generate_series(0, 2) AS a
