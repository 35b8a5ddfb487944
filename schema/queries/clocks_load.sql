SELECT k.kind, k.user_id, k.record_id, c.state::text
FROM unnest(%(kinds)s::text[], %(users)s::text[], %(records)s::text[]) AS k(kind, user_id, record_id)
JOIN {clocks} c USING (kind, user_id, record_id)
