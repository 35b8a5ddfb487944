-- Who leads: the session holding the leader advisory lock (key in %(key)s, a bigint the
-- server shows split in classid/objid), the leader epoch, and the standbys waiting on it.
WITH lock AS (
    SELECT l.pid, l.granted
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND ((l.classid::bigint << 32) | l.objid::bigint) = %(key)s
)
SELECT (SELECT leader_epoch FROM mana_ai.checkpoint WHERE name = 'projection') AS leader_epoch,
       a.pid AS leader_pid,
       coalesce(host(a.client_addr), 'local') AS leader_client,
       a.backend_start AS leader_since,
       (SELECT count(*) FROM lock WHERE NOT lock.granted)::int AS standbys_waiting
FROM (SELECT 1) AS one
LEFT JOIN lock ON lock.granted
LEFT JOIN pg_stat_activity a ON a.pid = lock.pid
