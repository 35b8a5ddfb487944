-- The due index rows of missions whose snapshots were just written ({due}: mana_ai.mission_due
-- or a replay's shadow of it). A NULL due_at means the mission cannot fall due (not active,
-- deleted, no nextRunAt in a due spelling): its row goes. An unchanged instant is not
-- rewritten, so an edit that leaves nextRunAt alone costs no dead tuple.
WITH x AS (
    SELECT * FROM unnest(%(users)s::text[], %(missions)s::text[], %(due_at)s::timestamptz[])
        AS x(user_id, mission_id, due_at)
), gone AS (
    DELETE FROM {due} d USING x
    WHERE x.due_at IS NULL AND d.user_id = x.user_id AND d.mission_id = x.mission_id
)
INSERT INTO {due} AS d (user_id, mission_id, due_at)
SELECT user_id, mission_id, due_at FROM x WHERE due_at IS NOT NULL
ON CONFLICT (user_id, mission_id) DO UPDATE SET due_at = EXCLUDED.due_at
    WHERE d.due_at IS DISTINCT FROM EXCLUDED.due_at
