-- Every difference between the live tables and the replay's shadow, into a temporary
-- table of the verify transaction: a record on one side only, or a different record,
-- last_applied_at, clock state or due instant. `fields` names what differs. `inflight`:
-- the record has journal rows at or above the live checkpoint, which the live projection
-- may not have applied yet, so a difference there proves nothing.
CREATE TEMP TABLE replay_diff ON COMMIT DROP AS
WITH inflight AS (
    SELECT DISTINCT CASE c.table_name WHEN 'agents' THEN 'agent' ELSE 'mission' END AS kind,
           c.user_id, c.record_id
    FROM mana_ai.journal j
    JOIN public.sync_changes c ON c.id = j.change_id
    WHERE j.xid >= %(applied_below)s::xid8
), snapshots AS (
    SELECT 'mission' AS kind, user_id, mission_id AS record_id, l.record AS live,
           s.record AS shadow, l.last_applied_at IS DISTINCT FROM s.last_applied_at AS at_differs
    FROM {live_missions} l FULL JOIN {shadow_missions} s USING (user_id, mission_id)
    WHERE l.record IS DISTINCT FROM s.record
       OR l.last_applied_at IS DISTINCT FROM s.last_applied_at
    UNION ALL
    SELECT 'agent', user_id, agent_id, l.record, s.record,
           l.last_applied_at IS DISTINCT FROM s.last_applied_at
    FROM {live_agents} l FULL JOIN {shadow_agents} s USING (user_id, agent_id)
    WHERE l.record IS DISTINCT FROM s.record
       OR l.last_applied_at IS DISTINCT FROM s.last_applied_at
), clocks AS (
    SELECT kind, user_id, record_id, l.state AS live, s.state AS shadow
    FROM {live_clocks} l FULL JOIN {shadow_clocks} s USING (kind, user_id, record_id)
    WHERE l.state IS DISTINCT FROM s.state
), due AS (
    SELECT 'mission' AS kind, user_id, mission_id AS record_id, l.due_at AS live,
           s.due_at AS shadow
    FROM {live_due} l FULL JOIN {shadow_due} s USING (user_id, mission_id)
    WHERE l.due_at IS DISTINCT FROM s.due_at
), diff AS (
    SELECT kind, user_id, record_id, 'snapshot' AS what, live IS NULL AS no_live,
           shadow IS NULL AS no_shadow,
           CASE WHEN live IS NOT NULL AND shadow IS NOT NULL THEN
               ARRAY(SELECT key FROM jsonb_each(live) a FULL JOIN jsonb_each(shadow) b USING (key)
                     WHERE a.value IS DISTINCT FROM b.value ORDER BY key)
               || CASE WHEN at_differs THEN ARRAY['last_applied_at'] ELSE ARRAY[]::text[] END
           END AS fields,
           NULL::bytea AS live_state, NULL::bytea AS shadow_state
    FROM snapshots
    UNION ALL
    -- Clock states are MessagePack: the caller decodes them to name the fields.
    SELECT kind, user_id, record_id, 'clock', live IS NULL, shadow IS NULL, NULL::text[],
           live, shadow
    FROM clocks
    UNION ALL
    -- The due index is derived from the snapshot: a row on one side only or another instant.
    SELECT kind, user_id, record_id, 'due', live IS NULL, shadow IS NULL, ARRAY['due_at'],
           NULL::bytea, NULL::bytea
    FROM due
)
SELECT d.kind, d.user_id, d.record_id, d.what,
       CASE WHEN d.no_live THEN 'only-replay'
            WHEN d.no_shadow THEN 'only-live'
            ELSE 'differs' END AS status,
       d.fields, d.live_state, d.shadow_state,
       EXISTS (SELECT 1 FROM inflight i
               WHERE i.kind = d.kind AND i.user_id = d.user_id AND i.record_id = d.record_id)
           AS inflight
FROM diff d
