-- One journal row by its key, in the shape of journal/read.sql (snapshot, rls, then the
-- row): the row-by-row path reads each key of a failed chunk exactly, so a transaction
-- committing meanwhile with a smaller xid cannot take a key's place.
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot()::text AS snapshot,
           row_security_active('public.sync_changes'::regclass) AS rls
)
SELECT snap.snapshot, snap.rls, r.*
FROM snap LEFT JOIN LATERAL (
    SELECT j.xid::text AS xid, j.change_id::text AS change_id, c.id IS NULL AS missing,
           c.user_id, c.table_name, c.record_id, c.op,
           c.data::text AS data, c.field_meta::text AS field_meta,
           CASE WHEN c.created_at BETWEEN '0001-01-03 00:00:00+00' AND '9999-12-29 00:00:00+00'
                THEN c.created_at END AS created_at,
           k.state, c.created_at::text AS created_at_text
    FROM mana_ai.journal j
    LEFT JOIN public.sync_changes c ON c.id = j.change_id
    LEFT JOIN mana_ai.record_clocks k
           ON k.kind = CASE c.table_name WHEN 'aiMissions' THEN 'mission'
                                         WHEN 'agents' THEN 'agent' END
          AND k.user_id = c.user_id AND k.record_id = c.record_id
    WHERE j.xid = %(xid)s::xid8 AND j.change_id = %(change_id)s::uuid
) r ON true
