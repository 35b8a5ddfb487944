-- Tokens per (user, agent) spent in the last %(window)s, for the pairs given; pairs without
-- usage are absent (the caller reads them as 0). Served by idx_token_usage_agent_at. The
-- window ends at the database's now(), as upstream's does: usage is stamped with it, and
-- the leader and every worker then read one budget, however their own clocks drift.
SELECT k.user_id, k.agent_id, sum(u.tokens)::bigint
FROM unnest(%(users)s::text[], %(agents)s::text[]) AS k(user_id, agent_id)
JOIN mana_ai.token_usage u
  ON u.user_id = k.user_id AND u.agent_id = k.agent_id AND u.at > now() - %(window)s::interval
GROUP BY k.user_id, k.agent_id
