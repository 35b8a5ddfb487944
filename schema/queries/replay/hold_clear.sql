DELETE FROM mana_ai.replay_hold WHERE name = 'replay'
