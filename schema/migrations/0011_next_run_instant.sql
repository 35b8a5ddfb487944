-- The instant a nextRunAt spelling stands for, whatever the mission's state: the due
-- spellings of consumer.decisions.DUE_SPELLING (a date alone; a date, 'T'/'t'/' ',
-- hh:mm[:ss[.fraction]] and 'Z'/'z' or an offset up to 15:59; no offset means UTC), read as
-- consumer.instants.parse_instant reads them; NULL for anything else.
--
-- Why. An occurrence's key (dispatch_ledger.due_at) is this instant, and ledger/prune.sql
-- keeps the occurrence a mission's current nextRunAt stands for. Prune compared with
-- mana_ai.instant() (migration 0006), which knows no date alone and no lower-case 't': the
-- current occurrence of such a mission looked moved on, was forgotten a week after it ran,
-- and the mission ran again at the same nextRunAt. mission_due_at (migration 0008) now
-- reads its instant here too, so the due index and the prune cannot disagree.
CREATE OR REPLACE FUNCTION mana_ai.next_run_instant(spelled TEXT) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    part TEXT[];
    at   TIMESTAMPTZ;
BEGIN
    part := regexp_match(spelled,
        '^([0-9]{4}-[0-9]{2}-[0-9]{2})'
        '(?:[Tt ]((?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]+)?)?)'
        '([Zz]|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)?)?$');
    IF part IS NULL THEN
        RETURN NULL;  -- not a due spelling (or NULL)
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

-- A mission record's due instant, or NULL when it never falls due (same results as
-- migration 0008's body, which this replaces: the parsing moved above).
CREATE OR REPLACE FUNCTION mana_ai.mission_due_at(record JSONB) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF record->>'state' IS DISTINCT FROM 'active' OR record->>'deletedAt' IS NOT NULL THEN
        RETURN NULL;
    END IF;
    RETURN mana_ai.next_run_instant(record->>'nextRunAt');
END
$$;
