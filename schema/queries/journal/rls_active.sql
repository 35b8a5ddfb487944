-- Would row level security hide rows of the log from this role? A superuser or a
-- BYPASSRLS role sees every row; anyone else under FORCE RLS sees only what
-- app.current_user_id allows, so a scan of the log would silently skip everyone else.
SELECT row_security_active('public.sync_changes'::regclass), current_user::text
