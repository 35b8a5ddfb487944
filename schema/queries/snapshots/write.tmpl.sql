-- One batch of merged records in one statement: one round trip, and an atomic transaction of
-- its own on an autocommit connection. Its parts (each after a "-- part <shape>" line) are
-- the CTEs of one WITH, each named {name} and reading its rows from the parameter {part};
-- a batch uses only those it needs, in the order of consumer/apply.py `_PARTS` (missions
-- and agents share the shapes "upsert" and "gone"), so a lone record's statement plans and
-- starts only what it writes. Each part's rows come as one JSON array of objects keyed by
-- column name (json, not jsonb: parsed once, as the rows are taken apart; clocks in
-- base64).
-- The tables come in the order every writer of them locks them (replay/lock_live.tmpl.sql):
-- a statement locks its tables as it names them. The answer (the "answer" parts, summed or
-- listed): how many snapshots were inserted (xmax is 0 only on a fresh insert) and how many
-- written in all, the reasons of the rows newly quarantined (a row quarantined before stays
-- as it was), whether the doorbell is armed ({arm}: the statement arms it, as
-- journal/doorbell_arm.sql does).
-- part clocks
{name} AS (
    INSERT INTO {table} AS k (kind, user_id, record_id, state)
    SELECT kind, user_id, record_id, decode(state, 'base64')
    FROM json_to_recordset({part}::json)
         AS x(kind text, user_id text, record_id text, state text)
    ON CONFLICT (kind, user_id, record_id) DO UPDATE SET state = EXCLUDED.state
)
-- part due
-- A NULL due_at: the mission cannot fall due (not active, deleted, no nextRunAt in a due
-- spelling), its row goes. An unchanged instant is not rewritten (no dead tuple).
due_in AS (
    SELECT * FROM json_to_recordset({part}::json)
        AS x(user_id text, mission_id text, due_at timestamptz)
), due_gone AS (
    DELETE FROM {table} d USING due_in x
    WHERE x.due_at IS NULL AND d.user_id = x.user_id AND d.mission_id = x.mission_id
), due_set AS (
    INSERT INTO {table} AS d (user_id, mission_id, due_at)
    SELECT user_id, mission_id, due_at FROM due_in WHERE due_at IS NOT NULL
    ON CONFLICT (user_id, mission_id) DO UPDATE SET due_at = EXCLUDED.due_at
        WHERE d.due_at IS DISTINCT FROM EXCLUDED.due_at
)
-- part upsert
-- The missions or the agents ({name}) that are visible: upserted into {table} by {key}.
{name} AS (
    INSERT INTO {table} (user_id, {key}, record, last_applied_at, updated_at)
    SELECT user_id, record_id, record, last_applied_at, now()
    FROM json_to_recordset({part}::json)
         AS x(user_id text, record_id text, record jsonb, last_applied_at timestamptz)
    ON CONFLICT (user_id, {key}) DO UPDATE
        SET record = EXCLUDED.record, last_applied_at = EXCLUDED.last_applied_at,
            updated_at = now()
    RETURNING (xmax = 0) AS inserted
)
-- part gone
-- The missions or the agents ({name}) that are no longer visible: deleted.
{name} AS (
    DELETE FROM {table} t
    USING json_to_recordset({part}::json) AS x(user_id text, record_id text)
    WHERE t.user_id = x.user_id AND t.{key} = x.record_id
)
-- part quarantined
{name} AS (
    INSERT INTO mana_ai.quarantine (change_id, reason, raw)
    SELECT change_id, reason, raw
    FROM json_to_recordset({part}::json)
         AS x(change_id uuid, reason text, raw jsonb)
    ON CONFLICT (change_id) DO NOTHING
    RETURNING reason
)
-- part moved
-- The checkpoint's compare-and-set (checkpoint/cas.sql says how it refuses).
{name} AS MATERIALIZED (
    SELECT mana_ai.advance_checkpoint(%(cp_name)s::text, %(cp_version)s::bigint,
                                      %(cp_below)s::xid8, false, %(epoch)s::bigint) AS version
)
-- part answer
SELECT {inserted}::bigint AS inserted, {written}::bigint AS written,
       {quarantined}::text[] AS quarantined, {moved}::bigint AS moved,
       CASE WHEN {arm} THEN pg_try_advisory_lock(%(key)s::bigint) END AS armed
