-- Switch this transaction to the write role and scope it to one user, in one round trip:
-- set_config('role', ..., true) is SET LOCAL ROLE (the same membership check), and the
-- user id is what the log's row level security policy compares with. Both end with the
-- transaction.
SELECT set_config('role', %(role)s, true), set_config('app.current_user_id', %(user_id)s, true)
