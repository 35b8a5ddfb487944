-- Journal trigger on mana-sync's log. Fires only for our two tables (the WHEN clause is
-- evaluated before any function call, so other apps' inserts pay almost nothing).
-- SECURITY DEFINER with a fixed search_path: mana-sync's role needs no grant on mana_ai.
CREATE OR REPLACE FUNCTION mana_ai.journal_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO mana_ai.journal (xid, change_id) VALUES (pg_current_xact_id(), NEW.id);
    -- A doorbell only: constant payload, so all rings of one transaction fold into one.
    PERFORM pg_notify('mana_ai_changes', '');
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION mana_ai.journal_change() FROM PUBLIC;

-- CREATE TRIGGER waits for every transaction inserting into sync_changes to finish
-- (SHARE ROW EXCLUSIVE against ROW EXCLUSIVE): each row is either committed before this
-- migration (found by the bootstrap scan of the log) or journaled after it.
CREATE OR REPLACE TRIGGER mana_ai_journal
    AFTER INSERT ON public.sync_changes
    FOR EACH ROW
    WHEN (NEW.app_id = 'ai' AND NEW.table_name IN ('aiMissions', 'agents'))
    EXECUTE FUNCTION mana_ai.journal_change();

INSERT INTO mana_ai.checkpoint (name, applied_below)
VALUES ('projection', pg_snapshot_xmin(pg_current_snapshot()))
ON CONFLICT (name) DO NOTHING;
