-- What a catch-up run leaves: snapshot and quarantine counts, and a digest of every record.
SELECT (SELECT count(*) FROM mana_ai.mission_snapshots)::int,
       (SELECT count(*) FROM mana_ai.agent_snapshots)::int,
       (SELECT count(*) FROM mana_ai.quarantine)::int,
       md5(coalesce((SELECT string_agg(user_id || mission_id || record::text, ','
                                       ORDER BY user_id, mission_id)
                     FROM mana_ai.mission_snapshots), '')
           || coalesce((SELECT string_agg(user_id || agent_id || record::text, ','
                                          ORDER BY user_id, agent_id)
                        FROM mana_ai.agent_snapshots), ''))
