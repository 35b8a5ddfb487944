SELECT kind, user_id, record_id, what, status, fields, live_state, shadow_state
FROM replay_diff
WHERE NOT inflight
ORDER BY kind, user_id, record_id, what
LIMIT %(limit)s
