-- In the replay's swap: every state is now rebuilt under the current merge rule, so the
-- note of migration 0009 goes (if that migration has run at all).
DO $$
BEGIN
    IF to_regclass('mana_ai.merge_rule_upgrade') IS NOT NULL THEN
        DELETE FROM mana_ai.merge_rule_upgrade;
    END IF;
END
$$
