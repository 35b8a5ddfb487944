-- Run lifecycle in the dispatch ledger.
--
-- An occurrence is (user, mission, nextRunAt as a UTC instant): '...00.000Z' and
-- '...00+00:00' are one occurrence. The leader inserts a `claimed` row for every `ran`
-- decision; any process takes it (FOR UPDATE SKIP LOCKED) into `running` under a lease
-- (owner + expiry, renewed while the run is alive); it ends `done` (committed in the same
-- transaction as the iteration's write-back row) or `failed` after the last attempt. A run
-- that ended without writing goes back to `claimed` with wake_at = the next attempt's
-- time; a lease that expired (its process died) is claimable again as it stands.
--
-- wake_at: when the row next needs a worker. For `claimed` the earliest start of the next
-- attempt, for `running` the lease expiry, NULL once done or failed. One partial index on
-- it serves the claim query.

-- The same instant as the consumer's parser reads it (consumer/merge.py): ISO-8601 with
-- 'T' or ' ', 'Z'/'z' or a numeric offset or none (read as UTC), fractional digits past
-- microseconds truncated. NULL for anything else, never an error, so one bad string does
-- not fail a query. IMMUTABLE holds: every string gets an explicit offset before the cast,
-- so the session's TimeZone plays no part.
CREATE OR REPLACE FUNCTION mana_ai.instant(t TEXT) RETURNS TIMESTAMPTZ
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?$'
                 AND pg_input_is_valid(n, 'timestamptz')
            THEN n::timestamptz END
    FROM (SELECT s,
                 regexp_replace(
                     CASE WHEN s ~ '([Zz]|[+-]\d{2}(:?\d{2})?)$' THEN s ELSE s || 'Z' END,
                     '[.,](\d{1,6})\d*', '.\1') AS n
          FROM (SELECT btrim(t) AS s) x) y
$$;

ALTER TABLE mana_ai.dispatch_ledger
    ADD COLUMN due_at        TIMESTAMPTZ,
    ADD COLUMN state         TEXT,
    ADD COLUMN attempts      INT NOT NULL DEFAULT 0,
    ADD COLUMN wake_at       TIMESTAMPTZ,
    ADD COLUMN lease_owner   TEXT,
    ADD COLUMN last_error    TEXT,
    ADD COLUMN trace_id      TEXT,
    ADD COLUMN parent_span   TEXT,
    ADD COLUMN started_at    TIMESTAMPTZ,
    ADD COLUMN iteration_id  TEXT;

UPDATE mana_ai.dispatch_ledger SET due_at = mana_ai.instant(next_run_at);

-- Rows whose string never parsed were never due: nothing to keep.
DELETE FROM mana_ai.dispatch_ledger WHERE due_at IS NULL;

-- Rows recorded without a planner ran nothing: forget them, so what is still due runs
-- once a planner is configured.
DELETE FROM mana_ai.dispatch_ledger WHERE outcome = 'recorded';

-- Two spellings of one instant were two rows: keep the first decided.
DELETE FROM mana_ai.dispatch_ledger l
USING mana_ai.dispatch_ledger k
WHERE k.user_id = l.user_id AND k.mission_id = l.mission_id AND k.due_at = l.due_at
  AND (k.decided_at, k.next_run_at) < (l.decided_at, l.next_run_at);

-- A run that wrote its iteration is done. One that errored, was cancelled, did not parse or
-- never recorded an end (its process died) wrote nothing: it is claimable again, with the
-- attempts of the new lifecycle still ahead of it.
UPDATE mana_ai.dispatch_ledger
SET state = CASE WHEN finished_at IS NOT NULL
                  AND coalesce(outcome, '') NOT IN ('error', 'cancelled', 'parse-failure')
                 THEN 'done' ELSE 'claimed' END,
    started_at = decided_at;
UPDATE mana_ai.dispatch_ledger
SET wake_at = now(), finished_at = NULL, last_error = outcome, outcome = NULL
WHERE state = 'claimed';

ALTER TABLE mana_ai.dispatch_ledger
    ALTER COLUMN due_at SET NOT NULL,
    ALTER COLUMN state SET NOT NULL,
    ALTER COLUMN state SET DEFAULT 'claimed',
    ALTER COLUMN wake_at SET DEFAULT now(),
    ADD CONSTRAINT dispatch_ledger_state CHECK (state IN ('claimed', 'running', 'done', 'failed')),
    DROP CONSTRAINT dispatch_ledger_pkey,
    ADD PRIMARY KEY (user_id, mission_id, due_at);

-- The claim query: runnable rows by when they become runnable.
CREATE INDEX IF NOT EXISTS idx_dispatch_ledger_wake
    ON mana_ai.dispatch_ledger (wake_at) WHERE state IN ('claimed', 'running');

-- The concurrency gate: an agent's live rows.
CREATE INDEX IF NOT EXISTS idx_dispatch_ledger_live_agent
    ON mana_ai.dispatch_ledger (user_id, agent_id) WHERE state IN ('claimed', 'running');

-- Pruning and `consumer status`: finished rows by age.
CREATE INDEX IF NOT EXISTS idx_dispatch_ledger_finished
    ON mana_ai.dispatch_ledger (finished_at) WHERE state IN ('done', 'failed');
