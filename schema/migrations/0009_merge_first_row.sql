-- The merge now keeps a record's first row apart, as upstream folds it: a field the first
-- row writes without a field_meta entry has no clock (any later write wins it), and a
-- field_meta key without a value still sets a clock. States in record_clocks written before
-- this version stamped such fields with the row's created_at and ignored such keys; they
-- still decode and keep merging by that old rule until `consumer replay` rebuilds them.
-- Note how many there were, so that `consumer migrate` and `consumer status` can say so
-- until a replay has run (the replay's swap deletes the note).
CREATE TABLE IF NOT EXISTS mana_ai.merge_rule_upgrade (
    name     TEXT PRIMARY KEY,
    states   BIGINT NOT NULL,
    noted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO mana_ai.merge_rule_upgrade (name, states)
SELECT 'first-row', count(*) FROM mana_ai.record_clocks HAVING count(*) > 0
ON CONFLICT (name) DO NOTHING;
