-- The due index: when each schedulable mission falls due, as an instant.
--
-- The seed's idx_mission_snapshots_due orders nextRunAt as TEXT, and text order is instant
-- order only for UTC spellings: '...T10:00+02:00' sorts two hours after its instant. This
-- table keeps nextRunAt parsed to a UTC instant beside the snapshots, so the scheduler finds
-- every due mission, and the next one to fall due, with one range scan whatever the offset.
-- A new table: the seed's tables keep their exact columns and indexes.
--
-- A row exists exactly for the missions that can fall due: state 'active', deletedAt absent
-- or JSON null (upstream's rule: record->>'deletedAt' IS NULL), nextRunAt in a due spelling.
-- Whatever writes a snapshot writes its row here in the same transaction (consumer/apply.py,
-- for the live tables and for replay's shadow tables alike).
CREATE TABLE IF NOT EXISTS mana_ai.mission_due (
    user_id    TEXT NOT NULL,
    mission_id TEXT NOT NULL,
    due_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, mission_id)
);

CREATE INDEX IF NOT EXISTS idx_mission_due_at ON mana_ai.mission_due (due_at);

-- A mission record's due instant, or NULL when it never falls due: the SQL twin of
-- consumer.decisions.due_instant (same spellings, same instants; a test holds them equal).
-- Spellings: a date alone, or a date, 'T'/'t'/' ', hh:mm[:ss[.fraction]] and 'Z'/'z' or an
-- offset up to 15:59 ('+hh', '+hhmm', '+hh:mm'); no offset means UTC. More than six
-- fraction digits are cut (not rounded), as the Python parser does. An impossible date
-- (February 30) or an instant outside the years 1..9999 in UTC gives NULL.
CREATE OR REPLACE FUNCTION mana_ai.mission_due_at(record JSONB) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    spelled TEXT := record->>'nextRunAt';
    part    TEXT[];
    at      TIMESTAMPTZ;
BEGIN
    IF record->>'state' IS DISTINCT FROM 'active' OR record->>'deletedAt' IS NOT NULL
       OR spelled IS NULL THEN
        RETURN NULL;
    END IF;
    part := regexp_match(spelled,
        '^([0-9]{4}-[0-9]{2}-[0-9]{2})'
        '(?:[Tt ]((?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]+)?)?)'
        '([Zz]|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)?)?$');
    IF part IS NULL THEN
        RETURN NULL;  -- not a due spelling
    END IF;
    BEGIN
        at := (part[1] || 'T'
               || coalesce(substring(part[2] FROM '^[0-9:]+(?:\.[0-9]{1,6})?'), '00:00')
               || coalesce(part[3], '+00:00'))::timestamptz;
    EXCEPTION WHEN data_exception THEN
        RETURN NULL;  -- an impossible date or offset
    END;
    IF at < '0001-01-01 00:00:00+00' OR at >= '10000-01-01 00:00:00+00' THEN
        RETURN NULL;
    END IF;
    RETURN at;
END
$$;

-- Backfill: the snapshots that exist before this migration.
INSERT INTO mana_ai.mission_due (user_id, mission_id, due_at)
SELECT user_id, mission_id, due_at
FROM (SELECT user_id, mission_id, mana_ai.mission_due_at(record) AS due_at
      FROM mana_ai.mission_snapshots) AS s
WHERE due_at IS NOT NULL
ON CONFLICT (user_id, mission_id) DO UPDATE SET due_at = EXCLUDED.due_at;
