-- The seed's migration (mana-ai db/migrate.ts), statement for statement.
CREATE SCHEMA IF NOT EXISTS mana_ai;

CREATE TABLE IF NOT EXISTS mana_ai.mission_snapshots (
    user_id TEXT NOT NULL,
    mission_id TEXT NOT NULL,
    record JSONB NOT NULL,
    last_applied_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, mission_id)
);

CREATE INDEX IF NOT EXISTS idx_mission_snapshots_due
    ON mana_ai.mission_snapshots ((record->>'state'), (record->>'nextRunAt'))
    WHERE record->>'state' = 'active';

CREATE INDEX IF NOT EXISTS idx_mission_snapshots_user
    ON mana_ai.mission_snapshots (user_id, last_applied_at);

CREATE TABLE IF NOT EXISTS mana_ai.decrypt_audit (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    mission_id TEXT NOT NULL,
    iteration_id TEXT,
    table_name TEXT NOT NULL,
    record_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed', 'scope-violation')),
    reason TEXT,
    ts TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_decrypt_audit_mission
    ON mana_ai.decrypt_audit (user_id, mission_id, ts DESC);

ALTER TABLE mana_ai.decrypt_audit ENABLE ROW LEVEL SECURITY;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_policies
        WHERE schemaname = 'mana_ai'
          AND tablename = 'decrypt_audit'
          AND policyname = 'decrypt_audit_user_scope'
    ) THEN
        CREATE POLICY decrypt_audit_user_scope ON mana_ai.decrypt_audit
            USING (user_id = current_setting('app.current_user_id', true));
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS mana_ai.agent_snapshots (
    user_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    record JSONB NOT NULL,
    last_applied_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, agent_id)
);

CREATE INDEX IF NOT EXISTS idx_agent_snapshots_user
    ON mana_ai.agent_snapshots (user_id, last_applied_at);

CREATE INDEX IF NOT EXISTS idx_agent_snapshots_state
    ON mana_ai.agent_snapshots ((record->>'state'))
    WHERE record->>'state' = 'active';
