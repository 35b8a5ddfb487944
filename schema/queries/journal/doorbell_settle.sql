-- Disarmed for certain, whatever a failed transaction did with the doorbell's lock (session
-- advisory locks ignore rollbacks and stack). The work connection holds no other advisory
-- lock. Answers false: not armed.
SELECT false FROM (SELECT pg_advisory_unlock_all()) AS settled
