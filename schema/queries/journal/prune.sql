-- Journal pruning that respects a running replay: delete below the checkpoint, but never
-- at or above the keep_from of a hold whose replay session is alive (it holds the replay
-- advisory lock, consumer.locks.REPLAY, in %(replay_lock)s). LEAST ignores the NULL of "no hold".
DELETE FROM mana_ai.journal
WHERE xid < LEAST(
    %(applied_below)s::xid8,
    (SELECT min(h.keep_from)
     FROM mana_ai.replay_hold h
     WHERE EXISTS (
         SELECT 1 FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.pid = h.pid
           AND l.objsubid = 1
           AND ((l.classid::bigint << 32) | l.objid::bigint) = %(replay_lock)s)))
