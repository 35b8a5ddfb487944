-- Journal pruning that respects a running replay: delete below the checkpoint, but never
-- at or above the keep_from of a hold whose replay session is alive (it holds the replay
-- advisory lock, key 1835094640 in replay_lock.sql). LEAST ignores the NULL of "no hold".
DELETE FROM mana_ai.journal
WHERE xid < LEAST(
    %(applied_below)s::xid8,
    (SELECT min(h.keep_from)
     FROM mana_ai.replay_hold h
     WHERE EXISTS (
         SELECT 1 FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.pid = h.pid
           AND l.classid = 0 AND l.objid = 1835094640 AND l.objsubid = 1)))
