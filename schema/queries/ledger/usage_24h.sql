-- Tokens per (user, agent) spent since %(since)s, for the pairs given; pairs without usage
-- are absent (the caller reads them as 0). Served by idx_token_usage_agent_at.
SELECT k.user_id, k.agent_id, sum(u.tokens)::bigint
FROM unnest(%(users)s::text[], %(agents)s::text[]) AS k(user_id, agent_id)
JOIN mana_ai.token_usage u
  ON u.user_id = k.user_id AND u.agent_id = k.agent_id AND u.at > %(since)s
GROUP BY k.user_id, k.agent_id
