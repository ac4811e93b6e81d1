-- Who may do what, enforced by PostgreSQL rather than by the service's good
-- behaviour. Three roles, shared by every database of the cluster (roles are
-- cluster-wide; privileges are granted per database, in sql/99_privileges.sql):
--
--   commissions_owner     owns every table, view and function of the engine.
--                         NOLOGIN: nobody works as the owner; the engine's
--                         entry points run as it (SECURITY DEFINER).
--   commissions_service   what the service logs in as: reads everything,
--                         calls the engine's entry points, keeps its own
--                         idempotency keys. It cannot write a ledger table.
--   commissions_readonly  for DBAs (GRANT commissions_readonly TO alice):
--                         reads everything, writes nothing, calls nothing
--                         that writes.
--
-- The login role is created without a password; set one where connections
-- are not trusted: ALTER ROLE commissions_service PASSWORD '...';
--
-- Two databases migrating at once (tests do) may both find a role missing;
-- the second CREATE then fails and is ignored.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['commissions_owner', 'commissions_service', 'commissions_readonly'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', v_role,
                    CASE v_role WHEN 'commissions_service' THEN 'LOGIN' ELSE 'NOLOGIN' END);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- A migrator that is not a superuser (a managed PostgreSQL's admin user) must
-- be a member of the owner to hand objects to it and to replace its functions.
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'commissions_owner', 'MEMBER') THEN
        EXECUTE format('GRANT commissions_owner TO %I', current_user);
    END IF;
END
$$;
