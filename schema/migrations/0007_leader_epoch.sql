-- Leader fencing. The process holding the leader advisory lock takes a new epoch when it
-- gets the lock; every checkpoint move and every decision claim names the epoch it was
-- made under and is refused in the same statement once a newer leader took over, so a
-- deposed process that has not noticed yet cannot write behind the new leader's back.
ALTER TABLE mana_ai.checkpoint ADD COLUMN IF NOT EXISTS leader_epoch BIGINT NOT NULL DEFAULT 0;

-- Called by the new leader right after it got the lock (a row lock on the checkpoint: an
-- apply of the previous leader still in flight either commits first or sees the new epoch).
CREATE OR REPLACE FUNCTION mana_ai.take_leadership(p_name TEXT) RETURNS BIGINT
LANGUAGE sql AS $$
    UPDATE mana_ai.checkpoint SET leader_epoch = leader_epoch + 1
    WHERE name = p_name
    RETURNING leader_epoch
$$;

-- True while `p_epoch` is the newest leader epoch: for a WHERE clause of a claim.
CREATE OR REPLACE FUNCTION mana_ai.still_leader(p_epoch BIGINT, p_name TEXT DEFAULT 'projection')
RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT leader_epoch = p_epoch FROM mana_ai.checkpoint WHERE name = p_name),
                    false)
$$;

-- The compare-and-set, now fenced: p_epoch NULL skips the epoch check (tools that hold no
-- leadership). A stale epoch raises MA002 (deposed: become a standby), a moved version
-- with our epoch still current raises MA001 (two appliers: a bug or a manual write, stop).
DROP FUNCTION IF EXISTS mana_ai.advance_checkpoint(TEXT, BIGINT, XID8, BOOLEAN);
CREATE OR REPLACE FUNCTION mana_ai.advance_checkpoint(
    p_name TEXT, p_version BIGINT, p_applied_below XID8, p_bootstrapped BOOLEAN,
    p_epoch BIGINT DEFAULT NULL
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    new_version BIGINT;
    current_epoch BIGINT;
BEGIN
    UPDATE mana_ai.checkpoint
    SET applied_below = GREATEST(applied_below, p_applied_below),
        bootstrapped = bootstrapped OR p_bootstrapped,
        version = version + 1,
        updated_at = now()
    WHERE name = p_name AND version = p_version
      AND (p_epoch IS NULL OR leader_epoch = p_epoch)
    RETURNING version INTO new_version;
    IF new_version IS NULL THEN
        SELECT leader_epoch INTO current_epoch FROM mana_ai.checkpoint WHERE name = p_name;
        IF p_epoch IS NOT NULL AND current_epoch IS DISTINCT FROM p_epoch THEN
            RAISE EXCEPTION 'leader epoch % of checkpoint % is gone (now %): deposed',
                p_epoch, p_name, current_epoch
                USING ERRCODE = 'MA002';
        END IF;
        RAISE EXCEPTION 'checkpoint % moved under us (expected version %)', p_name, p_version
            USING ERRCODE = 'MA001';
    END IF;
    RETURN new_version;
END $$;
