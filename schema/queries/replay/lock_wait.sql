-- Cleanup after a failed run: wait (up to lock_timeout) for the replay lock, which the
-- failed run's closed connection releases only once its server process has ended.
SELECT pg_advisory_lock(%(key)s)  -- consumer.locks.REPLAY
