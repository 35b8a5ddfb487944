-- Usage older than the budget window is never read again.
DELETE FROM mana_ai.token_usage WHERE at < %(before)s
