-- Bench only: the polling baseline's own snapshot tables, beside ours in the same
-- database, with the seed's columns and indexes (so its due query has the seed's index).
CREATE SCHEMA IF NOT EXISTS bench_tick;

CREATE TABLE IF NOT EXISTS bench_tick.mission_snapshots (
    user_id TEXT NOT NULL,
    mission_id TEXT NOT NULL,
    record JSONB NOT NULL,
    last_applied_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, mission_id)
);

CREATE INDEX IF NOT EXISTS bench_tick_mission_due
    ON bench_tick.mission_snapshots ((record->>'state'), (record->>'nextRunAt'))
    WHERE record->>'state' = 'active';

CREATE INDEX IF NOT EXISTS bench_tick_mission_user
    ON bench_tick.mission_snapshots (user_id, last_applied_at);

CREATE TABLE IF NOT EXISTS bench_tick.agent_snapshots (
    user_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    record JSONB NOT NULL,
    last_applied_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, agent_id)
);

CREATE INDEX IF NOT EXISTS bench_tick_agent_user
    ON bench_tick.agent_snapshots (user_id, last_applied_at);
