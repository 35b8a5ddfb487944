-- Journal rows not yet seen: not visible in the snapshot up to which everything was
-- applied ($prev), after the keyset position of this pass, in cursor order.
-- A LEFT JOIN so that a journal row whose log row is hidden (row level security) shows
-- up as NULLs instead of vanishing.
SELECT j.xid::text, j.change_id::text, c.id IS NULL AS hidden,
       c.user_id, c.table_name, c.record_id, c.op,
       c.data::text, c.field_meta::text, c.created_at
FROM mana_ai.journal j
LEFT JOIN public.sync_changes c ON c.id = j.change_id
WHERE j.xid >= pg_snapshot_xmin(%(prev)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(j.xid, %(prev)s::pg_snapshot)
  AND (j.xid, j.change_id) > (%(after_xid)s::xid8, %(after_id)s::uuid)
ORDER BY j.xid, j.change_id
LIMIT %(limit)s
