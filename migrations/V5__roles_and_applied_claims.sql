-- Roles, then a fix to idempotency claims (at the end).
--
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

-- Idempotency: the effect's own transaction marks its claim applied, so a
-- lost COMMIT acknowledgement can no longer be mistaken for a rollback. A
-- 5xx releases a claim only if it is not applied; a retry under an applied
-- claim whose response was lost gets a 409 saying it took effect, never a
-- second effect.
ALTER TABLE idempotency_keys ADD COLUMN applied_at timestamptz;
COMMENT ON COLUMN idempotency_keys.applied_at IS
    'Set in the same transaction as the request''s effect: non-NULL means the effect committed, even if its response was never stored. Such a claim is never released.';

CREATE OR REPLACE VIEW idempotency_stuck_claims AS
SELECT caller, method, route, path, key, created_at, now() - created_at AS age, applied_at
  FROM idempotency_keys
 WHERE state = 'in_progress'
   AND created_at < now() - interval '5 minutes';
COMMENT ON VIEW idempotency_stuck_claims IS
    'Claims in_progress for over 5 minutes (far past the API''s 30 s request deadline): the request died before its response was stored. applied_at set: its effect committed (look at path). applied_at NULL: whether it committed is unknown for claims from before V5; retries under the key get 409 until an operator checks the effect and, only if it did not happen, calls release_idempotency_claim. Never cleared automatically: that could repeat a payment.';

CREATE OR REPLACE FUNCTION release_idempotency_claim(p_caller text, p_method text, p_route text, p_key text)
RETURNS boolean
LANGUAGE sql
AS $$
    WITH released AS (
        DELETE FROM idempotency_keys
         WHERE caller = p_caller AND method = p_method AND route = p_route AND key = p_key
           AND state = 'in_progress' AND applied_at IS NULL
        RETURNING 1
    )
    SELECT count(*) > 0 FROM released
$$;
COMMENT ON FUNCTION release_idempotency_claim(text, text, text, text) IS
    'Deletes a claim still in_progress whose effect is not marked applied, so the client''s next request under the key runs. Call it only after checking that the effect did not happen; true if a claim was deleted. Completed and applied keys are never touched.';
