-- One replay at a time. Session-level: held until the replay's control connection closes.
-- The key is repeated in replay_journal_prune.sql (a hold counts while its session holds
-- this lock); pg_locks shows it as classid 0, objid 1835094640, objsubid 1.
SELECT pg_try_advisory_lock(1835094640)
