-- The next instant a mission falls due after %(now)s (the scheduler sleeps until then):
-- one step down the due index.
SELECT min(due_at) FROM mana_ai.mission_due WHERE due_at > %(now)s
