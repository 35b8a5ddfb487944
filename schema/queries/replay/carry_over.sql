-- Statements that give the shadow the live table's owner and grants (LIKE copies
-- neither), run in the swap transaction before the live table is dropped.
SELECT 'ALTER TABLE ' || s.oid::regclass::text
       || ' OWNER TO ' || quote_ident(pg_get_userbyid(l.relowner))
FROM pg_class l, pg_class s
WHERE l.oid = %(live)s::regclass AND s.oid = %(shadow)s::regclass AND l.relowner <> s.relowner
UNION ALL
SELECT 'GRANT ' || a.privilege_type || ' ON TABLE ' || %(shadow)s::regclass::text || ' TO '
       || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
       || CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
FROM pg_class l CROSS JOIN LATERAL aclexplode(l.relacl) a
WHERE l.oid = %(live)s::regclass AND a.grantee <> l.relowner
