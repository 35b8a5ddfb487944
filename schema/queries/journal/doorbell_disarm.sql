-- Disarm the doorbell: writers stop ringing (the consumer is awake and reads the journal).
SELECT pg_advisory_unlock(%(key)s::bigint)
