INSERT INTO {clocks} (kind, user_id, record_id, state)
SELECT kind, user_id, record_id, state
FROM unnest(%(kinds)b::text[], %(users)b::text[], %(records)b::text[], %(states)b::bytea[])
     AS x(kind, user_id, record_id, state)
ON CONFLICT (kind, user_id, record_id) DO UPDATE SET state = EXCLUDED.state
