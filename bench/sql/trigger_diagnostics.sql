-- Diagnostic triggers beside ours, in a throwaway database only: bodies that do part of
-- the journal trigger's work, so the cost of each part can be told apart.
CREATE FUNCTION mana_ai.bench_journal_only() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO mana_ai.journal (xid, change_id) VALUES (pg_current_xact_id(), NEW.id);
    RETURN NULL;
END $$;
CREATE FUNCTION mana_ai.bench_noop_definer() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN RETURN NULL; END $$;
CREATE FUNCTION mana_ai.bench_noop_plain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NULL; END $$;
