-- A run attempt checks the gates again before it calls the planner (consumer/worker.py).
-- When one closed since the claim, the occurrence is `released`: not run, due again as it
-- is, and decided afresh by the scheduler, which claims it again (the same row, its
-- attempts and last error kept) once the gate opens. Deleting the row instead would reset
-- the attempts, and an occurrence that spends its budget on answers that do not parse
-- would then never end `failed`, nor its interval mission move on.
ALTER TABLE mana_ai.dispatch_ledger
    DROP CONSTRAINT dispatch_ledger_state,
    ADD CONSTRAINT dispatch_ledger_state
        CHECK (state IN ('claimed', 'running', 'done', 'failed', 'released'));

-- Pruning: released rows are forgotten like finished ones, once their mission moved on.
DROP INDEX IF EXISTS mana_ai.idx_dispatch_ledger_finished;
CREATE INDEX IF NOT EXISTS idx_dispatch_ledger_finished
    ON mana_ai.dispatch_ledger (finished_at) WHERE state IN ('done', 'failed', 'released');
