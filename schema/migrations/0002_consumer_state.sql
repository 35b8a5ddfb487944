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
CREATE TABLE IF NOT EXISTS mana_ai.record_clocks (
    kind      TEXT NOT NULL CHECK (kind IN ('mission', 'agent')),
    user_id   TEXT NOT NULL,
    record_id TEXT NOT NULL,
    state     JSONB NOT NULL,
    PRIMARY KEY (kind, user_id, record_id)
);

-- A row that cannot be applied: stored once with its reason and the raw row.
CREATE TABLE IF NOT EXISTS mana_ai.quarantine (
    change_id      UUID PRIMARY KEY,
    reason         TEXT NOT NULL,
    raw            JSONB NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
