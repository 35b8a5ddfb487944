-- The keys of one chunk of journal/read.sql (same rows, same order), and nothing the
-- driver could fail to load: used to go through a chunk row by row when reading or
-- applying it as a whole failed.
SELECT j.xid::text, j.change_id::text
FROM mana_ai.journal j
WHERE j.xid >= pg_snapshot_xmin(%(prev)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(j.xid, %(prev)s::pg_snapshot)
  AND (j.xid, j.change_id) > (%(after_xid)s::xid8, %(after_id)s::uuid)
ORDER BY j.xid, j.change_id
LIMIT %(limit)s
