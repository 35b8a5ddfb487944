-- `consumer status`: the run lifecycle at a glance.
SELECT (SELECT coalesce(jsonb_object_agg(state, n), '{}'::jsonb)
          FROM (SELECT state, count(*)::int AS n FROM mana_ai.dispatch_ledger
                GROUP BY state) s) AS by_state,
       (SELECT extract(epoch FROM now() - min(started_at))::float8
          FROM mana_ai.dispatch_ledger WHERE state = 'running') AS oldest_running_seconds,
       (SELECT count(*)::int FROM mana_ai.dispatch_ledger
         WHERE state = 'running' AND wake_at < now()) AS expired_leases,
       (SELECT count(*)::int FROM mana_ai.dispatch_ledger
         WHERE state = 'failed' AND finished_at > now() - interval '1 hour')
           AS failed_last_hour
