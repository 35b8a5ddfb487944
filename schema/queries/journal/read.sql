-- One statement per chunk: the statement's snapshot, whether row level security applies
-- to this role on the log, and the journal rows not visible in the snapshot up to which
-- everything was applied ($prev), after the keyset position of this pass (exclusive) and
-- up to $upto (inclusive; the greatest key when reading a chunk, the key itself when the
-- row-by-row path reads one row exactly), in cursor order, each with its log row and the
-- stored clocks of its record. %(release)s: the doorbell's lock (%(key)s) is let go when
-- there are rows to read (the consumer is busy: writers stop ringing); without rows it
-- stays as it was (parked, armed).
-- The LEFT JOIN LATERAL returns the snapshot even when there are no rows (xid NULL).
-- A journal row without its log row comes back with missing=true instead of vanishing:
-- the row is hidden from us (row level security active) or gone (deleted, purged).
-- created_at is returned only inside the range a Python datetime holds (with two days'
-- margin for the session's time zone), else NULL with its text beside it: the driver
-- cannot load 'infinity' or year 10000, and one such row must not fail the whole chunk.
WITH snap AS MATERIALIZED (
    SELECT pg_current_snapshot()::text AS snapshot,
           row_security_active('public.sync_changes'::regclass) AS rls
), bell AS MATERIALIZED (
    -- The first of the rows read below, probed on its own: the read keeps its own plan (a
    -- CTE of its rows between them would hide how few come, and the log be hashed whole).
    SELECT CASE WHEN %(release)s::boolean AND (
                    SELECT j.xid FROM mana_ai.journal j
                    WHERE j.xid >= pg_snapshot_xmin(%(prev)s::pg_snapshot)
                      AND NOT pg_visible_in_snapshot(j.xid, %(prev)s::pg_snapshot)
                      AND (j.xid, j.change_id) > (%(after_xid)s::xid8, %(after_id)s::uuid)
                      AND (j.xid, j.change_id) <= (%(upto_xid)s::xid8, %(upto_id)s::uuid)
                    ORDER BY j.xid, j.change_id LIMIT 1) IS NOT NULL
                THEN pg_advisory_unlock(%(key)s::bigint) END AS released
)
SELECT snap.snapshot, snap.rls, bell.released, r.*
FROM snap CROSS JOIN bell LEFT JOIN LATERAL (
    SELECT j.xid::text AS xid, j.change_id::text AS change_id, c.id IS NULL AS missing,
           c.user_id, c.table_name, c.record_id, c.op,
           c.data::text AS data, c.field_meta::text AS field_meta,
           CASE WHEN c.created_at BETWEEN '0001-01-03 00:00:00+00' AND '9999-12-29 00:00:00+00'
                THEN c.created_at END AS created_at,
           k.state, c.created_at::text AS created_at_text
    FROM mana_ai.journal j
    LEFT JOIN LATERAL (
        -- One probe of the log's key per journal row, whatever the statistics say (OFFSET 0
        -- keeps this a subquery): the log is the big table and a pass reads a few of its
        -- rows; a hash join would scan all of it.
        SELECT c.id, c.user_id, c.table_name, c.record_id, c.op, c.data, c.field_meta,
               c.created_at
        FROM public.sync_changes c WHERE c.id = j.change_id OFFSET 0
    ) c ON true
    LEFT JOIN mana_ai.record_clocks k
           ON k.kind = CASE c.table_name WHEN 'aiMissions' THEN 'mission'
                                         WHEN 'agents' THEN 'agent' END
          AND k.user_id = c.user_id AND k.record_id = c.record_id
    WHERE j.xid >= pg_snapshot_xmin(%(prev)s::pg_snapshot)
      AND NOT pg_visible_in_snapshot(j.xid, %(prev)s::pg_snapshot)
      AND (j.xid, j.change_id) > (%(after_xid)s::xid8, %(after_id)s::uuid)
      AND (j.xid, j.change_id) <= (%(upto_xid)s::xid8, %(upto_id)s::uuid)
    ORDER BY j.xid, j.change_id
    LIMIT %(limit)s
) r ON true
