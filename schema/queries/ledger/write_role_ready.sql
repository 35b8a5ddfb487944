-- Whether this session can write back: the write role exists and may be SET ROLE to.
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s)
            THEN pg_has_role(current_user, %(role)s, 'SET') ELSE false END
