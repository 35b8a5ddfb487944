-- One replay at a time. Session-level: held until the replay's control connection closes.
-- Key: consumer.locks.REPLAY. journal/prune.sql honours a hold while its session holds
-- this lock.
SELECT pg_try_advisory_lock(%(key)s)
