-- Records that differ (a record counts once, whether its snapshot, its clock or both
-- differ), and those left out because the live projection may still be applying them.
SELECT count(DISTINCT (kind, user_id, record_id)) FILTER (WHERE NOT inflight),
       count(DISTINCT (kind, user_id, record_id)) FILTER (WHERE inflight)
FROM replay_diff
