-- mana-sync's change log, exactly as mana-sync defines it (docs/architecture.md#the-log). Owned by
-- mana-sync: we create it only for tests, the demo and a fresh dev database
-- (`consumer migrate --with-sync-schema`). In production it already exists.
CREATE TABLE IF NOT EXISTS public.sync_changes (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    app_id         TEXT NOT NULL,
    table_name     TEXT NOT NULL,
    record_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    op             TEXT NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    data           JSONB,
    field_meta     JSONB DEFAULT '{}',
    client_id      TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    schema_version INT NOT NULL DEFAULT 1,
    actor          JSONB,
    origin         TEXT,
    space_id       TEXT
);

CREATE INDEX IF NOT EXISTS idx_sync_changes_user_app_created
    ON public.sync_changes (user_id, app_id, created_at);
CREATE INDEX IF NOT EXISTS idx_sync_changes_table_record_created
    ON public.sync_changes (table_name, record_id, created_at);
CREATE INDEX IF NOT EXISTS idx_sync_changes_user_app_table_created
    ON public.sync_changes (user_id, app_id, table_name, created_at);
CREATE INDEX IF NOT EXISTS idx_sync_changes_user_space_app_created
    ON public.sync_changes (user_id, space_id, app_id, created_at)
    WHERE space_id IS NOT NULL;

ALTER TABLE public.sync_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.sync_changes FORCE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_policies
                   WHERE schemaname = 'public' AND tablename = 'sync_changes'
                     AND policyname = 'sync_changes_user_isolation') THEN
        CREATE POLICY sync_changes_user_isolation ON public.sync_changes
            USING (user_id = current_setting('app.current_user_id', true))
            WITH CHECK (user_id = current_setting('app.current_user_id', true));
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_policies
                   WHERE schemaname = 'public' AND tablename = 'sync_changes'
                     AND policyname = 'sync_changes_space_member_read') THEN
        CREATE POLICY sync_changes_space_member_read ON public.sync_changes
            FOR SELECT
            USING (space_id IS NOT NULL AND space_id = ANY(string_to_array(
                coalesce(current_setting('app.current_user_space_ids', true), ''), ',')));
    END IF;
END $$;
