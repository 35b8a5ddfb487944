-- What a swap by DROP + RENAME would not carry over from a live table, or what would stop
-- the DROP: user triggers, row level security and its policies, rules, views that read
-- the table, foreign keys that point at it. Empty means the swap is faithful. Checked
-- before the build, so a long build does not end in a refused swap.
SELECT c.oid::regclass::text, 'trigger ' || t.tgname
FROM pg_class c JOIN pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
WHERE c.oid = ANY(%(tables)s::regclass[])
UNION ALL
SELECT c.oid::regclass::text, 'policy ' || p.polname
FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid
WHERE c.oid = ANY(%(tables)s::regclass[])
UNION ALL
SELECT c.oid::regclass::text, 'row level security'
FROM pg_class c
WHERE c.oid = ANY(%(tables)s::regclass[]) AND (c.relrowsecurity OR c.relforcerowsecurity)
UNION ALL
SELECT c.oid::regclass::text, 'rule ' || r.rulename
FROM pg_class c JOIN pg_rewrite r ON r.ev_class = c.oid
WHERE c.oid = ANY(%(tables)s::regclass[])
UNION ALL
SELECT DISTINCT d.refobjid::regclass::text, 'view ' || r.ev_class::regclass::text
FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = ANY(%(tables)s::regclass[]) AND r.ev_class <> d.refobjid
UNION ALL
SELECT k.confrelid::regclass::text, 'foreign key ' || k.conname || ' of ' || k.conrelid::regclass::text
FROM pg_constraint k
WHERE k.contype = 'f' AND k.confrelid = ANY(%(tables)s::regclass[])
