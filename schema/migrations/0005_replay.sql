-- Replay's claim on the journal. A replay rebuilds the snapshots into shadow tables from
-- a snapshot S of the log, then applies every journal row not visible in S before it
-- swaps the shadow in. Those rows must survive journal pruning until the swap: while a
-- hold exists, pruning keeps every journal row with xid >= keep_from (<= S's xmin).
--
-- The hold lives only as long as the session that set it: `pid` holds the replay's
-- advisory lock, and pruning ignores a hold whose session is gone (a killed replay does
-- not pin the journal forever; the next replay replaces the row).
CREATE TABLE IF NOT EXISTS mana_ai.replay_hold (
    name       TEXT PRIMARY KEY,
    keep_from  XID8 NOT NULL,
    pid        INT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
