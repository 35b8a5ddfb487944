-- The pass's users' agents as upstream loads them (primary key prefix user_id): only those
-- whose deletedAt is absent or JSON null, so "" and false hide an agent too. The caller
-- keys them by the record's id; of two with one id the last (greatest key) wins.
SELECT a.user_id, a.agent_id, a.record::text
FROM mana_ai.agent_snapshots a
WHERE a.user_id = ANY(%(users)s::text[])
  AND a.record->>'deletedAt' IS NULL
ORDER BY a.user_id, a.agent_id
