-- The demo's view: how many rows are quarantined, and the latest few with their reason.
SELECT q.change_id::text, q.raw->>'record_id' AS record_id, q.reason,
       count(*) OVER () AS total
FROM mana_ai.quarantine AS q
ORDER BY q.quarantined_at DESC, q.change_id
LIMIT %(limit)s
