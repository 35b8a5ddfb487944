-- Every projected agent of the pass's users, in one query (primary key prefix user_id).
SELECT a.user_id, a.agent_id, a.record::text
FROM mana_ai.agent_snapshots a
WHERE a.user_id = ANY(%(users)s::text[])
