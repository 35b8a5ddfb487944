-- State of the stream consumer itself: journal (cursor), checkpoint, per-field clocks
-- for order-independent merge, and quarantine.

-- One row per change of ours, written by the trigger with the writer's transaction id.
-- (xid, change_id) is the cursor order: xid8 never wraps, and a transaction's rows
-- become visible together, so "all xid below the snapshot's xmin" is a safe watermark.
CREATE TABLE IF NOT EXISTS mana_ai.journal (
    xid       XID8 NOT NULL,
    change_id UUID NOT NULL,
    PRIMARY KEY (xid, change_id)
);

-- Progress of a consumer. applied_below: every journal row with xid below it is applied.
-- version: bumped by every commit, compared-and-set so a racing worker fails loudly.
CREATE TABLE IF NOT EXISTS mana_ai.checkpoint (
    name          TEXT PRIMARY KEY,
    applied_below XID8 NOT NULL,
    version       BIGINT NOT NULL DEFAULT 0,
    bootstrapped  BOOLEAN NOT NULL DEFAULT false,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per-field write clocks of every record we project (missions and agents), so that a
-- row arriving late, twice or out of order merges to the same result (DESIGN M1).
-- Kept beside the seed's snapshot tables, which stay column-for-column upstream's.
-- `state` is MessagePack (see consumer/merge.py): only the consumer reads it, and the
-- server stores it without parsing it.
CREATE TABLE IF NOT EXISTS mana_ai.record_clocks (
    kind      TEXT NOT NULL CHECK (kind IN ('mission', 'agent')),
    user_id   TEXT NOT NULL,
    record_id TEXT NOT NULL,
    state     BYTEA NOT NULL,
    PRIMARY KEY (kind, user_id, record_id)
);

-- A row that cannot be applied: stored once with its reason and the raw row.
CREATE TABLE IF NOT EXISTS mana_ai.quarantine (
    change_id      UUID PRIMARY KEY,
    reason         TEXT NOT NULL,
    raw            JSONB NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Compare-and-set of a checkpoint as one statement that fails on conflict, so the apply
-- transaction can send its writes, this and COMMIT in one round trip (pipeline) and still
-- roll back when another worker moved the checkpoint. SQLSTATE MA001 = conflict.
CREATE OR REPLACE FUNCTION mana_ai.advance_checkpoint(
    p_name TEXT, p_version BIGINT, p_applied_below XID8, p_bootstrapped BOOLEAN
) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    new_version BIGINT;
BEGIN
    UPDATE mana_ai.checkpoint
    SET applied_below = GREATEST(applied_below, p_applied_below),
        bootstrapped = bootstrapped OR p_bootstrapped,
        version = version + 1,
        updated_at = now()
    WHERE name = p_name AND version = p_version
    RETURNING version INTO new_version;
    IF new_version IS NULL THEN
        RAISE EXCEPTION 'checkpoint % moved under us (expected version %)', p_name, p_version
            USING ERRCODE = 'MA001';
    END IF;
    RETURN new_version;
END $$;
