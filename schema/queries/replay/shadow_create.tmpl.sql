-- A shadow copy of a live table: same columns, defaults, constraints and indexes (their
-- names are generated; the swap renames them to the live names).
CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL)
