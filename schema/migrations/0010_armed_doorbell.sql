-- The doorbell rings only while the consumer waits for it. A notifying commit costs the
-- writer a lock held across its WAL flush (notifying commits stop sharing a flush) and wakes
-- the listening backend on the writers' cores; under load the consumer is busy anyway and
-- needs no ring.
--
-- The "armed" flag is advisory lock 120265231131746 ("mana" "db"): the consumer holds it
-- exclusively, on its work connection, while it is parked on LISTEN. At its commit, each
-- transaction that wrote rows of ours tries the same lock in shared mode (a deferred
-- trigger), and holds it until the commit is over:
--   * the try fails while the consumer holds the lock: the commit rings;
--   * it succeeds otherwise, and then the consumer cannot take the lock until this commit
--     is over; having taken it, the consumer reads the journal again before it parks.
-- So a writer that found the flag down has committed (its rows visible to that re-read)
-- before the consumer can park: no wake-up is lost, whatever the timing. The consumer only
-- tries the lock (it never waits for writers) and polls again while it cannot take it;
-- deferred, the shared lock is held for the commit only, not while a transaction stays open.
CREATE OR REPLACE FUNCTION mana_ai.journal_change() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO mana_ai.journal (xid, change_id) VALUES (pg_current_xact_id(), NEW.id);
    IF NOT pg_try_advisory_xact_lock_shared(120265231131746) THEN
        -- A doorbell only: constant payload, so all rings of one transaction fold into one.
        PERFORM pg_notify('mana_ai_changes', '');
    END IF;
    RETURN NULL;
END $$;

REVOKE ALL ON FUNCTION mana_ai.journal_change() FROM PUBLIC;

-- Same name and condition, now fired at commit. Dropped and created in this migration's
-- transaction: writers wait for it (a moment), and each of their rows is journaled by one
-- of the two triggers (the xid is the writer's either way).
DROP TRIGGER IF EXISTS mana_ai_journal ON public.sync_changes;
CREATE CONSTRAINT TRIGGER mana_ai_journal
    AFTER INSERT ON public.sync_changes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.app_id = 'ai' AND NEW.table_name IN ('aiMissions', 'agents'))
    EXECUTE FUNCTION mana_ai.journal_change();
