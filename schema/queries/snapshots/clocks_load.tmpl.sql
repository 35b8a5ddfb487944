SELECT k.kind, k.user_id, k.record_id, c.state
FROM unnest(%(kinds)b::text[], %(users)b::text[], %(records)b::text[]) AS k(kind, user_id, record_id)
JOIN {clocks} c USING (kind, user_id, record_id)
