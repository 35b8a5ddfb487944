-- Least-privilege roles for the mana-ai consumer beside mana-sync.
--
-- Apply as a superuser (or a role with CREATEROLE that owns public.sync_changes), in
-- mana-sync's database, once public.sync_changes exists, before the consumer first starts
-- (or after: existing mana_ai objects are handed to the consumer's role below). Safe to run
-- again, e.g. after an upgrade.
--
--     psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f ops/roles.sql
--
-- Passwords are not set here: set them the way your site manages secrets, e.g.
--     ALTER ROLE mana_ai_consumer PASSWORD '...';
--
-- Three roles:
--   mana_sync          mana-sync's own login (writes the log). Unchanged: it needs nothing
--                      new for the consumer, because the journal trigger's function is
--                      SECURITY DEFINER (it runs as its owner, the consumer's role).
--   mana_ai_consumer   the consumer's login: reads the whole log, owns schema mana_ai.
--   mana_ai_writeback  NOLOGIN, no BYPASSRLS: the role the consumer switches to
--                      (SET LOCAL ROLE, inside a transaction scoped to the mission's user)
--                      to write an iteration back, so row level security binds that write.

-- ------------------------------------------------------------------ mana_sync
-- Shown so the whole picture is in one file; if mana-sync already has its role, this only
-- makes sure of the two privileges it has always used (its clients' reads and writes go
-- through row level security: no BYPASSRLS).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mana_sync') THEN
        CREATE ROLE mana_sync LOGIN NOBYPASSRLS;
    END IF;
END $$;
GRANT SELECT, INSERT ON public.sync_changes TO mana_sync;

-- ------------------------------------------------------------------ mana_ai_consumer
-- BYPASSRLS: sync_changes has row level security ENABLED and FORCED, and the consumer must
-- read every user's rows (journal reads, the one-time bootstrap scan, replay). It reads only
-- with it: every write into the log goes through mana_ai_writeback below. Without
-- BYPASSRLS the consumer stops with a one-line error ("journaled rows ... are hidden by row
-- level security") rather than skip rows.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mana_ai_consumer') THEN
        CREATE ROLE mana_ai_consumer LOGIN BYPASSRLS;
    ELSE
        ALTER ROLE mana_ai_consumer LOGIN BYPASSRLS;
    END IF;
END $$;

-- On mana-sync's table, exactly:
--   SELECT   read the log (journal reads join it; bootstrap and replay scan it);
--   TRIGGER  `consumer migrate` installs the journal trigger (and replaces it on upgrades).
-- No INSERT, UPDATE or DELETE: the consumer never writes the log as itself.
GRANT SELECT, TRIGGER ON public.sync_changes TO mana_ai_consumer;

-- The consumer owns its schema: migrations create tables in it, replay builds shadow tables
-- and renames them over the live ones (renaming needs ownership). Nothing outside mana_ai.
CREATE SCHEMA IF NOT EXISTS mana_ai AUTHORIZATION mana_ai_consumer;
ALTER SCHEMA mana_ai OWNER TO mana_ai_consumer;

-- A database migrated by an administrator first (`consumer migrate --with-sync-schema` as a
-- superuser, as the compose stack's init step does) has mana_ai objects owned by that
-- administrator: hand them to the consumer's role, so replay and later migrations work.
DO $$
DECLARE
    obj record;
BEGIN
    FOR obj IN
        SELECT c.oid::regclass AS name,
               CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                              WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind
        FROM pg_class AS c
        WHERE c.relnamespace = 'mana_ai'::regnamespace
          AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
          AND NOT (c.relkind = 'S' AND EXISTS (  -- owned sequences follow their table
              SELECT 1 FROM pg_depend AS d
              WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
          AND pg_get_userbyid(c.relowner) <> 'mana_ai_consumer'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO mana_ai_consumer', obj.kind, obj.name);
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure AS name
        FROM pg_proc AS p
        WHERE p.pronamespace = 'mana_ai'::regnamespace
          AND pg_get_userbyid(p.proowner) <> 'mana_ai_consumer'
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO mana_ai_consumer', obj.name);
    END LOOP;
END $$;

-- ------------------------------------------------------------------ mana_ai_writeback
-- No login and no BYPASSRLS: a write-back as this role must pass the log's row level
-- security policy (WITH CHECK user_id = app.current_user_id), so the consumer cannot write
-- a row into another user's log even by mistake. INSERT on the log and nothing else.
-- `consumer migrate` creates the same role when its role may (CREATEROLE); here the
-- administrator does it, so the consumer's role needs no CREATEROLE.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mana_ai_writeback') THEN
        CREATE ROLE mana_ai_writeback NOLOGIN NOBYPASSRLS;
    ELSE
        ALTER ROLE mana_ai_writeback NOLOGIN NOBYPASSRLS;
    END IF;
END $$;
GRANT INSERT ON public.sync_changes TO mana_ai_writeback;
-- Membership lets the consumer `SET LOCAL ROLE mana_ai_writeback` (SET TRUE) without
-- inheriting the role's INSERT (INHERIT FALSE): as itself, the consumer still cannot write
-- the log. (PostgreSQL 16 or later.)
GRANT mana_ai_writeback TO mana_ai_consumer WITH INHERIT FALSE, SET TRUE;
