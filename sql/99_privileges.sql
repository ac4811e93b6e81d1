-- Who may do what (the roles are made in migrations/V5__roles_and_applied_claims.sql). Applied
-- last on every migrate, after every CREATE OR REPLACE above has reset its
-- function to the defaults, so the lists below are the whole truth:
--
--   * commissions_owner owns every table, view, sequence, type and function
--     of this schema. Only it writes the ledger: the guards of
--     04_ledger_guards.sql let a write through only when the current user is
--     the owner and the engine says it is running, so SET commissions.engine
--     switches nothing off for anyone else.
--   * The functions in v_definer run as the owner (SECURITY DEFINER, with a
--     fixed search_path so a caller's objects cannot stand in for ours).
--     They are the only way in: the triggers that run the engine, and the
--     entry points an operator or the service calls.
--   * commissions_service reads everything, may execute the entry points in
--     v_service, and writes one table itself: idempotency_keys (its replay
--     cache of HTTP responses; no money).
--   * commissions_readonly reads everything but the partners' webhook
--     signing secrets (partner_webhook_secrets), and may execute nothing
--     that writes.
--
-- A new function that writes must be added to v_definer (and to v_service if
-- the service calls it); tests/api/roles.rs checks the service can do its
-- job and nothing more.
DO $$
DECLARE
    v_schema    name := current_schema();
    -- The triggers that write: they run as the owner whoever fires them.
    v_triggers  text[] := ARRAY['commission_engine', 'disputes_settle', 'publish_commission_entry',
        'publish_commission_approval', 'publish_payout', 'payouts_release_items',
        -- Not a trigger: the set publisher commissions_publish calls, once per transaction.
        'publish_commission_entries'];
    -- What the service (and an operator) calls.
    v_service   text[] := ARRAY[
        'lock_payment', 'change_payment_status', 'verify_payment', 'verify_payments', 'refund_payment', 'fail_payment',
        'record_payment', 'create_partner', 'update_partner', 'set_partner_recurring_months', 'mark_notification_read',
        'apply_webhook_event', 'apply_webhook_events', 'record_rejected_webhook_event', 'reapply_parked_events',
        -- The lifecycle (08_lifecycle.sql): the approval timer, payouts, hold periods.
        'approve_due_commissions', 'create_payouts', 'change_payout_state', 'mark_payout_sent',
        'mark_payout_paid', 'mark_payout_failed', 'set_partner_hold_days',
        -- Outbound partner webhooks (09_partner_webhooks.sql): registration and the sender.
        'register_partner_webhook', 'disable_partner_webhook', 'lease_partner_webhooks',
        'record_partner_webhook_attempt', 'release_partner_webhook'];
    v_definer   text[] := v_triggers || v_service;
    v_object    record;
BEGIN
    -- The schema: nobody but the owner creates in it. A function a caller
    -- could create here (public.round(numeric, smallint), a closer match than
    -- pg_catalog's) would be found by the engine's own search_path and run
    -- as the owner. PostgreSQL 15 revokes this by default; older clusters
    -- and upgraded databases do not. The owner needs CREATE to be handed
    -- objects by a migrator that is not a superuser.
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, commissions_service, commissions_readonly', v_schema);
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO commissions_owner', v_schema);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO commissions_service, commissions_readonly', v_schema);

    -- Ownership. Tables first: their identity sequences follow them.
    FOR v_object IN
        SELECT c.oid::regclass AS name, c.relkind
          FROM pg_class c
         WHERE c.relnamespace = v_schema::regnamespace
           AND c.relkind IN ('r', 'p', 'v', 'm')
           AND c.relname <> 'refinery_schema_history'
           AND c.relowner <> 'commissions_owner'::regrole
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY c.relkind = 'r' DESC
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO commissions_owner',
            CASE v_object.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
            v_object.name);
    END LOOP;
    FOR v_object IN
        SELECT c.oid::regclass AS name
          FROM pg_class c
         WHERE c.relnamespace = v_schema::regnamespace
           AND c.relkind = 'S'
           AND c.relowner <> 'commissions_owner'::regrole
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i', 'e'))
           AND c.relname NOT LIKE 'refinery%'
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO commissions_owner', v_object.name);
    END LOOP;
    FOR v_object IN
        SELECT t.oid::regtype AS name
          FROM pg_type t
         WHERE t.typnamespace = v_schema::regnamespace
           -- Enums, domains, and composite types of their own (not a table's row type).
           AND (t.typtype IN ('e', 'd')
                OR t.typtype = 'c' AND EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
           AND t.typowner <> 'commissions_owner'::regrole
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO commissions_owner', v_object.name);
    END LOOP;

    -- Functions: every one owned by the owner; the listed ones run as it.
    FOR v_object IN
        SELECT p.oid::regprocedure AS name, p.proname::text AS proname, p.proowner
          FROM pg_proc p
         WHERE p.pronamespace = v_schema::regnamespace
           AND p.prokind = 'f'
           AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        IF v_object.proowner <> 'commissions_owner'::regrole THEN
            EXECUTE format('ALTER FUNCTION %s OWNER TO commissions_owner', v_object.name);
        END IF;
        IF v_object.proname = ANY (v_definer) THEN
            EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp', v_object.name, v_schema);
            -- Dates and month arithmetic (hold periods, recurring windows) in
            -- UTC, whatever the caller's session says.
            EXECUTE format('ALTER FUNCTION %s SET TimeZone = %L', v_object.name, 'UTC');
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', v_object.name);
            IF v_object.proname = ANY (v_service) THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO commissions_service', v_object.name);
            ELSE
                EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM commissions_service', v_object.name);
            END IF;
        END IF;
    END LOOP;

    -- The database: only the three roles (and superusers) connect. Any login
    -- could otherwise LISTEN on the engine's channels and read every event,
    -- or hold the advisory locks the engine takes. No temporary objects.
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO commissions_owner, commissions_service, commissions_readonly',
                   current_database());

    -- Tables: reading for both roles; writing for nobody but the owner,
    -- except the service's own replay cache.
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM PUBLIC, commissions_service, commissions_readonly', v_schema);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM PUBLIC, commissions_service, commissions_readonly', v_schema);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO commissions_service, commissions_readonly', v_schema);
    GRANT INSERT, UPDATE, DELETE ON idempotency_keys TO commissions_service;
    -- A DBA's read-only login needs no partner's signing secret; the service
    -- signs with them (it reads them through lease_partner_webhooks).
    REVOKE SELECT ON partner_webhook_secrets FROM commissions_readonly;
END
$$;
