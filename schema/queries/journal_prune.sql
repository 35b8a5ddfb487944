DELETE FROM mana_ai.journal WHERE xid < %(applied_below)s::xid8
