-- Scheduler state: the dispatch ledger (at most one run per due occurrence) and the
-- token usage behind the rolling 24 h budget. New tables only: the seed's tables keep
-- their exact columns and indexes (DESIGN M2); due selection uses the seed's
-- idx_mission_snapshots_due.

-- One row per dispatched occurrence. An occurrence is (user, mission, the raw nextRunAt
-- string): the same string is the same occurrence, a moved nextRunAt is a new one. The
-- primary key is the claim: INSERT ... ON CONFLICT DO NOTHING RETURNING succeeds for
-- exactly one scheduler, across restarts and replicas. Only `ran` decisions are written;
-- skipped ones must be decided again when something changes.
CREATE TABLE IF NOT EXISTS mana_ai.dispatch_ledger (
    user_id     TEXT NOT NULL,
    mission_id  TEXT NOT NULL,
    next_run_at TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT,
    agent_id    TEXT,
    decided_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome     TEXT,
    PRIMARY KEY (user_id, mission_id, next_run_at)
);

-- Tokens an agent spent, one row per planner call; summed over the last 24 h.
CREATE TABLE IF NOT EXISTS mana_ai.token_usage (
    user_id  TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    tokens   INT NOT NULL CHECK (tokens >= 0),
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_token_usage_agent_at
    ON mana_ai.token_usage (user_id, agent_id, at);
