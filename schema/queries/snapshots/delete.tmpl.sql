DELETE FROM {table} t
USING unnest(%(users)b::text[], %(records)b::text[]) AS x(user_id, record_id)
WHERE t.user_id = x.user_id AND t.{key} = x.record_id
