-- Still the leader of epoch `epoch`? (false once another process took the lock)
SELECT mana_ai.still_leader(%(epoch)s::bigint)
