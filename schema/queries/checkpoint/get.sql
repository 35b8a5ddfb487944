SELECT applied_below::text, version, bootstrapped FROM mana_ai.checkpoint WHERE name = %(name)s
