-- Arm the doorbell: take its lock (%(key)s) without waiting. False while a writer of ours is
-- between its journaled row and its commit (it holds the lock shared): its row comes with
-- its commit, so the consumer polls again rather than park.
SELECT pg_try_advisory_lock(%(key)s::bigint)
