INSERT INTO mana_ai.token_usage (user_id, agent_id, tokens) VALUES (%(user_id)s, %(agent_id)s, %(tokens)s)
