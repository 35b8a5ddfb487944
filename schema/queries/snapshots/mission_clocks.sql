-- The projection's field clocks of one mission: the write-back stamps its fields no earlier
-- than these, so a device clock ahead of the server cannot undo them.
SELECT state FROM mana_ai.record_clocks
WHERE kind = 'mission' AND user_id = %(user_id)s AND record_id = %(mission_id)s
