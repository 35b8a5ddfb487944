-- The names the shadow's indexes and constraints must take: each is paired with the live
-- one of the same definition (names aside). Run before the live table is dropped.
-- Columns: 'index' | 'constraint', the shadow's name, the live name; a NULL name means
-- one side has something the other lacks (the caller refuses to swap).
WITH idx AS (
    SELECT i.indrelid AS rel, c.relname::text AS name,
           regexp_replace(pg_get_indexdef(i.indexrelid),
                          '^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?\S+ ', '\1') AS body
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid IN (%(live)s::regclass, %(shadow)s::regclass)
), con AS (
    -- Index-backed constraints (primary key, unique) follow their index's rename.
    SELECT conrelid AS rel, conname::text AS name, contype::text || pg_get_constraintdef(oid) AS body
    FROM pg_constraint
    WHERE conrelid IN (%(live)s::regclass, %(shadow)s::regclass) AND conindid = 0
), numbered AS (
    SELECT 'index' AS what, rel, name, body,
           row_number() OVER (PARTITION BY rel, body ORDER BY name) AS n
    FROM idx
    UNION ALL
    SELECT 'constraint', rel, name, body,
           row_number() OVER (PARTITION BY rel, body ORDER BY name)
    FROM con
), s AS (
    SELECT * FROM numbered WHERE rel = %(shadow)s::regclass
), l AS (
    SELECT * FROM numbered WHERE rel = %(live)s::regclass
)
SELECT coalesce(s.what, l.what), s.name, l.name
FROM s FULL JOIN l USING (what, body, n)
ORDER BY 1, 3
