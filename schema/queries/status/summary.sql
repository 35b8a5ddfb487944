-- lag_rows counts journal rows at or past the checkpoint: committed, and not yet covered by
-- it. The live consumer may already have applied some of them (it applies rows ahead of a
-- checkpoint held back by an open transaction), so this is an upper bound.
SELECT cp.applied_below::text AS checkpoint,
       pg_snapshot_xmin(pg_current_snapshot())::text AS watermark,
       (SELECT count(*) FROM mana_ai.journal j WHERE j.xid >= cp.applied_below)::int AS lag_rows,
       (SELECT extract(epoch FROM now() - min(c.created_at))::float8
          FROM mana_ai.journal j JOIN public.sync_changes c ON c.id = j.change_id
         WHERE j.xid >= cp.applied_below) AS oldest_unapplied_age_seconds,
       (SELECT count(*) FROM mana_ai.journal)::int AS journal_rows,
       (SELECT count(*) FROM mana_ai.quarantine)::int AS quarantined,
       (SELECT count(*) FROM mana_ai.mission_snapshots)::int AS missions,
       (SELECT count(*) FROM mana_ai.agent_snapshots)::int AS agents,
       cp.bootstrapped,
       cp.updated_at AS checkpoint_updated_at
FROM mana_ai.checkpoint cp
WHERE cp.name = 'projection'
