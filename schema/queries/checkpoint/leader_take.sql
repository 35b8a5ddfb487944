-- The new leader's epoch (call while holding the leader lock).
SELECT mana_ai.take_leadership(%(name)s)
