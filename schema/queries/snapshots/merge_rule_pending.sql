-- Clock states written under the old merge rule and not yet rebuilt by a replay (see
-- migration 0009); no row when there is nothing to do.
SELECT states, noted_at FROM mana_ai.merge_rule_upgrade WHERE name = 'first-row'
