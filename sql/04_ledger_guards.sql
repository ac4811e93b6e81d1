-- The ledger is append-only and the totals are the engine's alone. These
-- guards turn a well-meant hand edit in psql into a clear error instead of a
-- silent mismatch between the balances and the ledger.

CREATE OR REPLACE FUNCTION reject_ledger_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed. To undo a commission, refund its payment (SELECT refund_payment(<payment id>)).',
        TG_TABLE_NAME, TG_OP USING ERRCODE = 'CM003';
END
$$;
COMMENT ON FUNCTION reject_ledger_change() IS
    'Trigger function: refuses UPDATE, DELETE and TRUNCATE on the append-only tables (commissions, commission_events) and TRUNCATE of what the engine keeps from them.';

CREATE OR REPLACE TRIGGER commissions_append_only
    BEFORE UPDATE OR DELETE ON commissions
    FOR EACH ROW EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER commissions_append_only ON commissions IS 'The ledger is never updated or deleted.';

CREATE OR REPLACE TRIGGER commissions_no_truncate
    BEFORE TRUNCATE ON commissions
    FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER commissions_no_truncate ON commissions IS 'The ledger is never truncated.';

-- Entries and events are written by the engine only: one typed by hand
-- would be published as a commission nobody earned.
CREATE OR REPLACE FUNCTION reject_hand_insert()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '% is written by the commission engine only: verify, refund or dispute the payment instead (SELECT verify_payment(<id>), SELECT refund_payment(<id>, <amount>))',
        TG_TABLE_NAME USING ERRCODE = 'CM003';
END
$$;
COMMENT ON FUNCTION reject_hand_insert() IS
    'Trigger function: refuses an INSERT into commissions or commission_events that does not come from the engine.';

CREATE OR REPLACE TRIGGER commissions_engine_only
    BEFORE INSERT ON commissions
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION reject_hand_insert();
COMMENT ON TRIGGER commissions_engine_only ON commissions IS 'Only the engine appends to the ledger.';

CREATE OR REPLACE TRIGGER commission_events_engine_only
    BEFORE INSERT ON commission_events
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION reject_hand_insert();
COMMENT ON TRIGGER commission_events_engine_only ON commission_events IS 'Only the engine writes events.';

CREATE OR REPLACE TRIGGER partner_balances_no_truncate
    BEFORE TRUNCATE ON partner_balances
    FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER partner_balances_no_truncate ON partner_balances IS 'Balances are sums of the ledger; emptying them would leave the ledger unmatched.';

CREATE OR REPLACE TRIGGER partner_streams_no_truncate
    BEFORE TRUNCATE ON partner_streams
    FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER partner_streams_no_truncate ON partner_streams IS 'Seqs restarting at 1 would repeat events to resuming clients.';

CREATE OR REPLACE TRIGGER event_log_head_no_truncate
    BEFORE TRUNCATE ON event_log_head
    FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER event_log_head_no_truncate ON event_log_head IS 'The admin position is the engine''s.';

CREATE OR REPLACE TRIGGER disputes_no_truncate
    BEFORE TRUNCATE ON disputes
    FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER disputes_no_truncate ON disputes IS 'The ledger settled each dispute; they are never truncated.';

CREATE OR REPLACE TRIGGER commission_events_append_only
    BEFORE UPDATE OR DELETE ON commission_events
    FOR EACH ROW EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER commission_events_append_only ON commission_events IS 'The event log is never rewritten: clients resume from it.';

CREATE OR REPLACE TRIGGER commission_events_no_truncate
    BEFORE TRUNCATE ON commission_events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER commission_events_no_truncate ON commission_events IS 'The event log is never truncated.';

CREATE OR REPLACE FUNCTION engine_is_running()
RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT current_user = 'commissions_owner' AND coalesce(current_setting('commissions.engine', true), '') = 'on' $$;
COMMENT ON FUNCTION engine_is_running() IS
    'True inside the engine (its functions run as commissions_owner and set commissions.engine): lets the guards tell the engine''s writes from a hand edit. The setting alone proves nothing: anyone may SET it. This function must stay SECURITY INVOKER, or current_user would always be the owner.';

CREATE OR REPLACE FUNCTION touch_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION touch_updated_at() IS 'Trigger function: sets updated_at on every update.';

CREATE OR REPLACE FUNCTION guard_engine_columns()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF engine_is_running() THEN
        RETURN coalesce(NEW, OLD);
    END IF;
    IF TG_TABLE_NAME = 'partner_balances' THEN
        RAISE EXCEPTION 'partner_balances are kept by the commission engine from the ledger: % by hand is not allowed (partner %, %)',
            TG_OP, coalesce(NEW.partner_id, OLD.partner_id), coalesce(NEW.currency, OLD.currency)
            USING ERRCODE = 'CM003';
    END IF;
    IF TG_TABLE_NAME = 'payout_items' THEN
        RAISE EXCEPTION 'payout_items are written by the engine: create payouts with create_payouts(now()), let go of one''s items with mark_payout_failed(<id>, <reason>)'
            USING ERRCODE = 'CM003';
    END IF;
    IF TG_TABLE_NAME = 'commission_program' THEN
        RAISE EXCEPTION 'commission_program has exactly one row: UPDATE it (% is not allowed)', TG_OP
            USING ERRCODE = 'CM003';
    END IF;
    RAISE EXCEPTION '% is kept by the commission engine (it orders the event log): % by hand is not allowed',
        TG_TABLE_NAME, TG_OP USING ERRCODE = 'CM003';
END
$$;
COMMENT ON FUNCTION guard_engine_columns() IS
    'Trigger function: only the engine may write partner_balances, partner_streams, event_log_head and payout_items; commission_program keeps its one row.';

-- The WHEN clauses keep the engine's own writes (three per event) from
-- calling the trigger function at all; the function checks again anyway. A
-- write passes only when it is the owner's (the engine's functions run as
-- commissions_owner) and the engine has said it is running: SET LOCAL
-- commissions.engine = 'on' by anyone else switches nothing off. They
-- spell out engine_is_running() because a trigger's WHEN is prepared again for
-- every statement, and inlining a SQL function means parsing its body.
DROP TRIGGER IF EXISTS partners_guard_seq ON partners;

CREATE OR REPLACE TRIGGER partner_balances_guard
    BEFORE INSERT OR UPDATE OR DELETE ON partner_balances
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION guard_engine_columns();
COMMENT ON TRIGGER partner_balances_guard ON partner_balances IS 'Balances change only with the ledger, in the engine.';

CREATE OR REPLACE TRIGGER partner_streams_guard
    BEFORE INSERT OR UPDATE OR DELETE ON partner_streams
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION guard_engine_columns();
COMMENT ON TRIGGER partner_streams_guard ON partner_streams IS 'A partner''s seq is the engine''s: a gap or repeat would break resume.';

CREATE OR REPLACE TRIGGER event_log_head_guard
    BEFORE INSERT OR UPDATE OR DELETE ON event_log_head
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION guard_engine_columns();
COMMENT ON TRIGGER event_log_head_guard ON event_log_head IS 'The admin position is the engine''s: a gap or repeat would break admin resume.';

CREATE OR REPLACE TRIGGER partners_touch
    BEFORE UPDATE ON partners
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
COMMENT ON TRIGGER partners_touch ON partners IS 'Keeps partners.updated_at.';
