-- The runner's write-back: one sync_changes row, inside a transaction that has set
-- app.current_user_id (consumer.db.user_transaction), so the RLS policy's WITH CHECK
-- holds for the mission's user and for no one else. Every value is a bound parameter.
-- The id is chosen by the caller (random, like the column default) so that no RETURNING,
-- and no SELECT privilege on the log, is needed to know which row was written.
INSERT INTO public.sync_changes
    (id, app_id, table_name, record_id, user_id, op, data, field_meta, client_id,
     schema_version, actor, origin)
VALUES
    (%(id)s::uuid, %(app_id)s, %(table_name)s, %(record_id)s, %(user_id)s, %(op)s,
     %(data)s::jsonb, %(field_meta)s::jsonb, %(client_id)s, %(schema_version)s,
     %(actor)s::jsonb, %(origin)s)
