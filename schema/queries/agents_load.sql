-- The pass's users' agents as upstream loads them (primary key prefix user_id): only those
-- whose deletedAt is absent or JSON null, so "" and false hide an agent too.
SELECT a.user_id, a.agent_id, a.record::text
FROM mana_ai.agent_snapshots a
WHERE a.user_id = ANY(%(users)s::text[])
  AND a.record->>'deletedAt' IS NULL
