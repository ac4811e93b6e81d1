-- The commission lifecycle: hold period, approval, payouts, clawback.
--
--   pending --(hold period over: approve_due_commissions)--> approved
--   approved --(create_payouts)--> in a payout: pending -> sent -> paid
--                                                      \-> failed (payable again)
--
-- A reversal or a dispute applies at any stage (settle_commission): before
-- approval it lowers pending; after, the payable balance; after the
-- commission's payout, the balance goes negative (clawback) and the next
-- payout nets it. The ledger stays append-only: approval is an entry (kind
-- approved), every entry records its commission's stage, and a payout
-- covers entries through payout_items.
--
-- Totals per partner and currency (partner_balances, checked by
-- commission_audit):
--   pending    sum of entry_pending_delta: in the hold period, not approved
--   approved   sum of entry_payable_delta of stage approved entries not in a
--              live payout: payable commissions
--   balance    sum of entry_payable_delta of every entry not in a live payout:
--              what the next payout pays (approved minus clawback)
--   in_payout  payouts pending or sent;  paid: payouts paid
--
-- Locks. Approval and payout runs lock the payments they touch, as a refund
-- does (settle_commission), so a reversal is written at the stage its
-- commission is really in. Publishing is at commit, as for every entry:
-- approval batches (commission_approvals) and payout state changes have
-- deferred publishers that call publish_event, in the one lock order
-- (event_log_head, partner_streams, partner_balances). Nothing here locks a
-- balance row in the transaction body.

CREATE OR REPLACE FUNCTION utc_text(p_at timestamptz)
RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;
COMMENT ON FUNCTION utc_text(timestamptz) IS 'A time as the wire writes it: RFC 3339 in UTC with microseconds, whatever the session''s TimeZone.';

CREATE OR REPLACE FUNCTION set_partner_hold_days(p_partner_id bigint, p_hold_days integer)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    UPDATE partners SET hold_days = p_hold_days WHERE id = p_partner_id RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION set_partner_hold_days(bigint, integer) IS
    'Sets a partner''s hold period in days (0 to 3650; NULL: the program default). It applies to the partner''s pending commissions too: the next approve_due_commissions approves those whose earned time plus the new hold has passed. Returns the id, or NULL if there is no such partner.';

-- The views at the end read the functions below; they are recreated there.
DROP VIEW IF EXISTS payable_balances, payouts_with_items, commissions_due_for_approval;

-- ---------------------------------------------------------------------------
-- Approval
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION due_commissions(p_now timestamptz)
RETURNS TABLE (commission_id bigint, payment_id bigint, partner_id bigint, currency char(3), amount numeric, earned_at timestamptz, due_at timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT e.id, e.payment_id, e.partner_id, e.currency, e.amount - s.reversed, e.created_at, d.due_at
      FROM commissions e
      JOIN partners p ON p.id = e.partner_id
      CROSS JOIN commission_program g
      CROSS JOIN LATERAL (SELECT e.created_at + make_interval(days => coalesce(p.hold_days, g.default_hold_days)) AS due_at) d
      CROSS JOIN LATERAL (
          SELECT coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reversed'), 0)
                   - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'reinstated'), 0) AS reversed,
                 coalesce(sum(c.amount) FILTER (WHERE c.kind = 'held'), 0)
                   - coalesce(sum(c.amount) FILTER (WHERE c.kind = 'released'), 0) AS held,
                 coalesce(bool_or(c.approval_id IS NOT NULL), false) AS approved
            FROM commissions c
           WHERE c.payment_id = e.payment_id AND c.kind <> 'earned') s
     WHERE e.kind = 'earned'
       AND d.due_at <= p_now
       AND NOT s.approved
       AND s.held = 0
       AND e.amount - s.reversed > 0
$$;
COMMENT ON FUNCTION due_commissions(timestamptz) IS
    'Commissions due for approval at p_now: pending, their hold period over, something left after reversals, and no open dispute holding part of them (those wait until it ends). commission_id is the earned entry; amount is what approval makes payable. due_commissions(''infinity'') ignores the hold period.';

-- Called with the payments' rows locked (by approve_due_commissions, or by
-- the engine at verification with a hold of 0 days).
CREATE OR REPLACE FUNCTION approve_commissions(p_payment_ids bigint[], p_as_of timestamptz)
RETURNS SETOF commission_approvals
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM set_config('commissions.engine', 'on', true);
    RETURN QUERY
    WITH due AS (
        -- The rules of due_commissions, without the hold period: the caller decided that.
        SELECT e.payment_id, e.partner_id, e.currency, e.rate, e.payment_amount, e.minor_units, d.amount
          FROM due_commissions('infinity') d
          JOIN commissions e ON e.id = d.commission_id
         WHERE d.payment_id = ANY (p_payment_ids)
    ), batches AS (
        INSERT INTO commission_approvals (partner_id, currency, as_of, commissions, amount)
        SELECT d.partner_id, d.currency, p_as_of, count(*), sum(d.amount)
          FROM due d
         GROUP BY d.partner_id, d.currency
         ORDER BY d.partner_id, d.currency
        RETURNING *
    ), entries AS (
        INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units, stage, approval_id)
        SELECT d.payment_id, d.partner_id, 'approved', d.amount, d.currency, d.rate, d.payment_amount, 'hold_ended', d.minor_units,
               'approved', b.id
          FROM due d
          JOIN batches b ON b.partner_id = d.partner_id AND b.currency = d.currency
         ORDER BY d.payment_id
    )
    SELECT * FROM batches;
    PERFORM set_config('commissions.engine', '', true);
END
$$;
COMMENT ON FUNCTION approve_commissions(bigint[], timestamptz) IS
    'Engine internals: approves the commissions of these payments (whose rows the caller has locked) that are still pending, with something left and nothing held: one approved entry each, grouped in one batch per partner and currency. Returns the batches.';

CREATE OR REPLACE FUNCTION approve_due_commissions(p_now timestamptz)
RETURNS SETOF commission_approvals
LANGUAGE plpgsql
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF p_now IS NULL THEN
        RAISE EXCEPTION 'approve_due_commissions needs the time to approve at, e.g. approve_due_commissions(now())'
            USING ERRCODE = 'CM002';
    END IF;
    -- One caller at a time does the work; the others return at once, so a
    -- node's timer never queues behind another node's run (or a DBA's).
    IF NOT pg_try_advisory_xact_lock(7164946332151808301) THEN
        RAISE NOTICE 'another approve_due_commissions is running: this call approved nothing';
        RETURN;
    END IF;
    -- The payments' rows, as a refund takes them: a refund in progress is
    -- skipped (its commission is approved on the next run), and one that
    -- starts now waits and then sees the approval.
    SELECT array_agg(l.id ORDER BY l.id) INTO v_ids
      FROM (SELECT p.id FROM payments p
             WHERE p.id IN (SELECT d.payment_id FROM due_commissions(p_now) d)
             ORDER BY p.id
               FOR UPDATE OF p SKIP LOCKED) l;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- A new statement, so a new snapshot: what committed before the locks
    -- were taken (another run, a refund) is seen, and approve_commissions
    -- checks again.
    RETURN QUERY SELECT * FROM approve_commissions(v_ids, p_now);
END
$$;
COMMENT ON FUNCTION approve_due_commissions(timestamptz) IS
    'Approves every commission whose hold period is over at p_now (SELECT * FROM approve_due_commissions(now())). Each node runs it on a timer (APPROVAL_INTERVAL_SECS); one call at a time does the work (a transaction advisory lock; a concurrent call returns nothing) and a commission is approved once (commissions_one_approval_per_payment). Returns one batch per partner and currency, each published as one commission.approved event.';

CREATE OR REPLACE FUNCTION publish_commission_approval()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_amount text := money_text(NEW.amount, NEW.currency);
BEGIN
    PERFORM publish_event(
        NEW.partner_id, NEW.currency, 'commission.approved',
        jsonb_build_object(
            'approval_id', NEW.id,
            'currency',    NEW.currency,
            'commissions', NEW.commissions,
            'amount',      v_amount,
            'as_of',       utc_text(NEW.as_of)),
        'Commissions approved',
        format('%s %s from %s commission(s) is now payable.', v_amount, NEW.currency, NEW.commissions),
        0, -NEW.amount, 0, 0, NEW.amount, NEW.amount, 0, 0);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION publish_commission_approval() IS
    'Engine internals (deferred trigger on commission_approvals, at commit): one commission.approved event per batch, moving its amount from pending to approved and balance.';

DROP TRIGGER IF EXISTS commission_approvals_publish ON commission_approvals;
CREATE CONSTRAINT TRIGGER commission_approvals_publish
    AFTER INSERT ON commission_approvals
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION publish_commission_approval();
COMMENT ON TRIGGER commission_approvals_publish ON commission_approvals IS
    'Publishes each approval batch at COMMIT: an approval run over 10,000 commissions is one event per partner and currency, not 10,000.';

-- ---------------------------------------------------------------------------
-- Payouts
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION payout_transition_allowed(p_from text, p_to text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
BEGIN
    RETURN (p_from, p_to) IN (('pending', 'sent'), ('sent', 'paid'), ('pending', 'failed'), ('sent', 'failed'));
END
$$;
COMMENT ON FUNCTION payout_transition_allowed(text, text) IS
    'The legal payout state changes: pending -> sent -> paid, and pending or sent -> failed. paid and failed are final.';

CREATE OR REPLACE FUNCTION payouts_check_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'payout % cannot be deleted: mark it failed instead (SELECT mark_payout_failed(%, ''<reason>''))',
            OLD.id, OLD.id USING ERRCODE = 'CM003';
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NOT engine_is_running() THEN
            RAISE EXCEPTION 'payouts are created by the engine only: SELECT * FROM create_payouts(now())'
                USING ERRCODE = 'CM003';
        END IF;
        IF NEW.state <> 'pending' THEN
            RAISE EXCEPTION 'a payout is created pending' USING ERRCODE = 'CM006';
        END IF;
        RETURN NEW;
    END IF;
    -- The times are the engine's too: each is set below, by the change it records.
    IF (NEW.id, NEW.partner_id, NEW.currency, NEW.amount, NEW.approved_amount, NEW.clawback_amount, NEW.minor_units, NEW.as_of, NEW.created_at,
        NEW.sent_at, NEW.paid_at, NEW.failed_at)
       IS DISTINCT FROM (OLD.id, OLD.partner_id, OLD.currency, OLD.amount, OLD.approved_amount, OLD.clawback_amount, OLD.minor_units, OLD.as_of, OLD.created_at,
        OLD.sent_at, OLD.paid_at, OLD.failed_at) THEN
        RAISE EXCEPTION 'payout %: only its state, provider reference and failure reason can change', OLD.id
            USING ERRCODE = 'CM003';
    END IF;
    IF NEW.state = OLD.state THEN
        IF (NEW.provider_reference, NEW.failure_reason) IS DISTINCT FROM (OLD.provider_reference, OLD.failure_reason) THEN
            RAISE EXCEPTION 'payout % is %: its provider reference and failure reason are recorded with a state change', OLD.id, OLD.state
                USING ERRCODE = 'CM006';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.state IS NULL OR NOT coalesce(payout_transition_allowed(OLD.state, NEW.state), false) THEN
        RAISE EXCEPTION 'illegal state change for payout %: % -> % (allowed: pending -> sent -> paid, pending or sent -> failed)',
            OLD.id, OLD.state, NEW.state USING ERRCODE = 'CM006';
    END IF;
    IF OLD.provider_reference IS NOT NULL AND NEW.provider_reference IS DISTINCT FROM OLD.provider_reference THEN
        RAISE EXCEPTION 'payout % already has the provider reference %', OLD.id, OLD.provider_reference
            USING ERRCODE = 'CM006';
    END IF;
    IF NEW.state = 'paid' AND NEW.provider_reference IS NULL THEN
        RAISE EXCEPTION 'payout %: marking it paid needs the payout provider''s reference', OLD.id
            USING ERRCODE = 'CM002';
    END IF;
    IF NEW.state = 'failed' AND NEW.failure_reason IS NULL THEN
        RAISE EXCEPTION 'payout %: marking it failed needs a reason', OLD.id USING ERRCODE = 'CM002';
    END IF;
    IF NEW.state <> 'failed' AND NEW.failure_reason IS NOT NULL THEN
        RAISE EXCEPTION 'payout %: a failure reason goes with the state failed', OLD.id USING ERRCODE = 'CM006';
    END IF;
    CASE NEW.state
        WHEN 'sent'   THEN NEW.sent_at := now();
        WHEN 'paid'   THEN NEW.paid_at := now();
        WHEN 'failed' THEN NEW.failed_at := now();
    END CASE;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION payouts_check_change() IS
    'Trigger function: the payout state machine (payout_transition_allowed), whoever writes: only the engine creates payouts, amounts never change, paid needs the provider''s reference and failed a reason, nothing is deleted. Illegal changes raise CM006.';

CREATE OR REPLACE TRIGGER payouts_check_change
    BEFORE INSERT OR UPDATE OR DELETE ON payouts
    FOR EACH ROW EXECUTE FUNCTION payouts_check_change();
COMMENT ON TRIGGER payouts_check_change ON payouts IS 'Enforces the payout state machine before any row is written.';

CREATE OR REPLACE FUNCTION payouts_release_items()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM set_config('commissions.engine', 'on', true);
    UPDATE payout_items SET live = false WHERE payout_id = NEW.id;
    PERFORM set_config('commissions.engine', '', true);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION payouts_release_items() IS
    'Trigger function: a failed payout lets go of its ledger entries, so they are payable again (the next create_payouts covers them).';

CREATE OR REPLACE TRIGGER payouts_release_items
    AFTER UPDATE OF state ON payouts
    FOR EACH ROW WHEN (NEW.state = 'failed' AND OLD.state <> 'failed')
    EXECUTE FUNCTION payouts_release_items();
COMMENT ON TRIGGER payouts_release_items ON payouts IS 'A failed payout''s entries become payable again.';

CREATE OR REPLACE FUNCTION publish_payout()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    p       payouts := NEW;
    v_state text := CASE WHEN TG_OP = 'INSERT' THEN 'created' ELSE NEW.state END;
    v_amount text := round(NEW.amount, NEW.minor_units)::text;
BEGIN
    PERFORM publish_event(
        p.partner_id, p.currency, 'payout.' || v_state,
        jsonb_build_object(
            'payout_id',          p.id,
            'state',              p.state,
            'amount',             v_amount,
            'currency',           p.currency,
            'approved_amount',    round(p.approved_amount, p.minor_units)::text,
            'clawback_amount',    round(p.clawback_amount, p.minor_units)::text,
            'provider_reference', p.provider_reference,
            'failure_reason',     p.failure_reason),
        CASE v_state
            WHEN 'created' THEN 'Payout created'
            WHEN 'sent'    THEN 'Payout sent'
            WHEN 'paid'    THEN 'Payout paid'
            ELSE                'Payout failed'
        END,
        CASE v_state
            WHEN 'created' THEN format('A payout of %s %s was created (payout %s).', v_amount, p.currency, p.id)
            WHEN 'sent'    THEN format('Payout %s of %s %s is on its way.', p.id, v_amount, p.currency)
            WHEN 'paid'    THEN format('Payout %s of %s %s was paid (reference %s).', p.id, v_amount, p.currency, p.provider_reference)
            ELSE                format('Payout %s of %s %s failed (%s); the amount is payable again.', p.id, v_amount, p.currency, p.failure_reason)
        END,
        0, 0, 0, 0,
        CASE v_state WHEN 'created' THEN -p.approved_amount WHEN 'failed' THEN p.approved_amount ELSE 0 END,
        CASE v_state WHEN 'created' THEN -p.amount WHEN 'failed' THEN p.amount ELSE 0 END,
        CASE v_state WHEN 'created' THEN p.amount WHEN 'sent' THEN 0 ELSE -p.amount END,
        CASE v_state WHEN 'paid' THEN p.amount ELSE 0 END);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION publish_payout() IS
    'Engine internals (deferred trigger on payouts, at commit): payout.created moves the amount from balance to in_payout, payout.sent moves nothing, payout.paid moves it to paid, payout.failed back to balance.';

DROP TRIGGER IF EXISTS payouts_publish_created ON payouts;
CREATE CONSTRAINT TRIGGER payouts_publish_created
    AFTER INSERT ON payouts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION publish_payout();
COMMENT ON TRIGGER payouts_publish_created ON payouts IS 'Publishes payout.created at COMMIT.';

DROP TRIGGER IF EXISTS payouts_publish_state ON payouts;
CREATE CONSTRAINT TRIGGER payouts_publish_state
    AFTER UPDATE OF state ON payouts
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION publish_payout();
COMMENT ON TRIGGER payouts_publish_state ON payouts IS
    'Publishes payout.sent, payout.paid and payout.failed at COMMIT, in the order the changes were made.';

CREATE OR REPLACE FUNCTION payable_entries(p_now timestamptz)
RETURNS TABLE (commission_id bigint, payment_id bigint, partner_id bigint, currency char(3), stage text, amount numeric)
LANGUAGE sql STABLE
AS $$
    SELECT c.id, c.payment_id, c.partner_id, c.currency, c.stage, entry_payable_delta(c.kind, c.stage, c.amount)
      FROM commissions c
     WHERE c.stage <> 'pending'
       AND c.created_at <= p_now
       AND NOT EXISTS (SELECT 1 FROM payout_items i WHERE i.commission_id = c.id AND i.live)
$$;
COMMENT ON FUNCTION payable_entries(timestamptz) IS
    'The ledger entries written by p_now that move a payable balance and are in no live payout, each with what it adds to the next payout (negative for clawback).';

CREATE OR REPLACE FUNCTION create_payouts(p_now timestamptz, p_partner_id bigint DEFAULT NULL, p_currency char(3) DEFAULT NULL)
RETURNS SETOF payouts
LANGUAGE plpgsql
AS $$
DECLARE
    g     record;
    v     payouts;
    v_ids bigint[];
BEGIN
    IF p_now IS NULL THEN
        RAISE EXCEPTION 'create_payouts needs the time to pay up to, e.g. create_payouts(now())' USING ERRCODE = 'CM002';
    END IF;
    -- One run at a time: a second waits, then finds the entries covered.
    PERFORM pg_advisory_xact_lock(7164946332151808302);
    -- The payments' rows, as a refund takes them: a refund in progress
    -- finishes first (its reversal is netted in this payout); one that
    -- starts now waits, then sees the payout (its reversal is clawback).
    -- The payout covers these payments only, and all of each one's payable
    -- entries whenever they were written: a payment approved after this
    -- point waits for the next run, and a reversal that committed while we
    -- waited for the locks is netted, never left out while its approval is
    -- paid (the next statement's snapshot sees it).
    SELECT array_agg(l.id) INTO v_ids FROM (
        SELECT p.id FROM payments p
         WHERE p.id IN (SELECT e.payment_id FROM payable_entries(p_now) e
                         WHERE (p_partner_id IS NULL OR e.partner_id = p_partner_id)
                           AND (p_currency IS NULL OR e.currency = p_currency))
         ORDER BY p.id
           FOR SHARE OF p) l;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- One snapshot for all groups: each payout's amount is exactly its items.
    FOR g IN
        SELECT e.partner_id, e.currency, c.minor_units,
               sum(e.amount) AS amount,
               coalesce(sum(e.amount) FILTER (WHERE e.stage = 'approved'), 0) AS approved_amount,
               -coalesce(sum(e.amount) FILTER (WHERE e.stage = 'paid'), 0) AS clawback_amount,
               array_agg(e.commission_id ORDER BY e.commission_id) AS ids,
               array_agg(e.amount ORDER BY e.commission_id) AS amounts
          FROM payable_entries('infinity') e
          JOIN currencies c ON c.code = e.currency
         WHERE e.payment_id = ANY (v_ids)
           AND (p_partner_id IS NULL OR e.partner_id = p_partner_id)
           AND (p_currency IS NULL OR e.currency = p_currency)
         GROUP BY e.partner_id, e.currency, c.minor_units, c.payout_minimum
        HAVING sum(e.amount) >= c.payout_minimum
         ORDER BY e.partner_id, e.currency
    LOOP
        PERFORM set_config('commissions.engine', 'on', true);
        INSERT INTO payouts (partner_id, currency, amount, approved_amount, clawback_amount, minor_units, as_of)
        VALUES (g.partner_id, g.currency, g.amount, g.approved_amount, g.clawback_amount, g.minor_units, p_now)
        RETURNING * INTO v;
        INSERT INTO payout_items (payout_id, commission_id, amount)
        SELECT v.id, u.id, u.amount FROM unnest(g.ids, g.amounts) AS u (id, amount);
        PERFORM set_config('commissions.engine', '', true);
        RETURN NEXT v;
    END LOOP;
END
$$;
COMMENT ON FUNCTION create_payouts(timestamptz, bigint, char) IS
    'Creates one pending payout per partner and currency whose payable balance (approved minus clawback, entries written by p_now) reaches the currency''s payout_minimum; optionally for one partner or currency. A balance below the minimum, or negative, waits. SELECT * FROM create_payouts(now());';

-- PL/pgSQL: a SQL function taking a row type is not inlined. VOLATILE, so
-- that SELECT payout_json(o) FROM create_payouts(..) o counts the items that
-- create_payouts just wrote (a STABLE function sees the calling query's snapshot).
CREATE OR REPLACE FUNCTION payout_json(p payouts)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE STRICT
AS $$
BEGIN
    RETURN jsonb_build_object(
        'id',                 p.id,
        'partner_id',         p.partner_id,
        'currency',           p.currency,
        'amount',             round(p.amount, p.minor_units)::text,
        'approved_amount',    round(p.approved_amount, p.minor_units)::text,
        'clawback_amount',    round(p.clawback_amount, p.minor_units)::text,
        'state',              p.state,
        'provider_reference', p.provider_reference,
        'failure_reason',     p.failure_reason,
        'items',              (SELECT count(*) FROM payout_items i WHERE i.payout_id = p.id),
        'created_at',         utc_text(p.created_at),
        'sent_at',            utc_text(p.sent_at),
        'paid_at',            utc_text(p.paid_at),
        'failed_at',          utc_text(p.failed_at));
END
$$;
COMMENT ON FUNCTION payout_json(payouts) IS 'A payout as the REST API sends it: amounts as decimal strings with its minor units, times in UTC, and how many ledger entries it covers.';

CREATE OR REPLACE FUNCTION change_payout_state(p_payout_id bigint, p_state text, p_provider_reference text, p_failure_reason text)
RETURNS payouts
LANGUAGE plpgsql
AS $$
DECLARE
    v payouts;
BEGIN
    SELECT * INTO v FROM payouts WHERE id = p_payout_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payout % does not exist', p_payout_id USING ERRCODE = 'CM004';
    END IF;
    IF v.state = p_state THEN
        RAISE EXCEPTION 'illegal state change for payout %: it is already %', p_payout_id, p_state USING ERRCODE = 'CM006';
    END IF;
    -- Said here in words, before the CHECK constraints would say it by name.
    IF p_provider_reference IS NOT NULL AND length(btrim(p_provider_reference)) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'payout %: a provider reference needs 1 to 200 characters besides spaces', p_payout_id
            USING ERRCODE = 'CM002';
    END IF;
    IF p_failure_reason IS NOT NULL AND length(btrim(p_failure_reason)) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'payout %: a failure reason needs 1 to 500 characters besides spaces', p_payout_id
            USING ERRCODE = 'CM002';
    END IF;
    UPDATE payouts
       SET state = p_state,
           provider_reference = coalesce(p_provider_reference, provider_reference),
           failure_reason = coalesce(p_failure_reason, failure_reason)
     WHERE id = p_payout_id
    RETURNING * INTO v;
    RETURN v;
END
$$;
COMMENT ON FUNCTION change_payout_state(bigint, text, text, text) IS
    'Moves a payout to a new state under its row lock; payouts_check_change checks the transition. Used by mark_payout_sent, mark_payout_paid and mark_payout_failed.';

CREATE OR REPLACE FUNCTION mark_payout_sent(p_payout_id bigint, p_provider_reference text DEFAULT NULL)
RETURNS payouts
LANGUAGE plpgsql
AS $$ BEGIN RETURN change_payout_state(p_payout_id, 'sent', p_provider_reference, NULL); END $$;
COMMENT ON FUNCTION mark_payout_sent(bigint, text) IS 'A pending payout was handed to the payout provider (optionally with its reference).';

CREATE OR REPLACE FUNCTION mark_payout_paid(p_payout_id bigint, p_provider_reference text DEFAULT NULL)
RETURNS payouts
LANGUAGE plpgsql
AS $$ BEGIN RETURN change_payout_state(p_payout_id, 'paid', p_provider_reference, NULL); END $$;
COMMENT ON FUNCTION mark_payout_paid(bigint, text) IS 'A sent payout was paid; needs the provider''s reference (here or when it was sent). Final: a payout is never paid twice.';

CREATE OR REPLACE FUNCTION mark_payout_failed(p_payout_id bigint, p_failure_reason text)
RETURNS payouts
LANGUAGE plpgsql
AS $$ BEGIN RETURN change_payout_state(p_payout_id, 'failed', NULL, p_failure_reason); END $$;
COMMENT ON FUNCTION mark_payout_failed(bigint, text) IS 'A pending or sent payout failed, with the reason; its amount is payable again. Final.';

-- ---------------------------------------------------------------------------
-- Guards: what the engine keeps, nobody edits by hand
-- ---------------------------------------------------------------------------

CREATE OR REPLACE TRIGGER commission_approvals_engine_only
    BEFORE INSERT ON commission_approvals
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION reject_hand_insert();
COMMENT ON TRIGGER commission_approvals_engine_only ON commission_approvals IS 'Approval batches are written by approve_due_commissions only.';

CREATE OR REPLACE TRIGGER commission_approvals_append_only
    BEFORE UPDATE OR DELETE ON commission_approvals
    FOR EACH ROW EXECUTE FUNCTION reject_ledger_change();
COMMENT ON TRIGGER commission_approvals_append_only ON commission_approvals IS 'Approval batches are part of the ledger: never changed.';

CREATE OR REPLACE TRIGGER payout_items_guard
    BEFORE INSERT OR UPDATE OR DELETE ON payout_items
    FOR EACH ROW WHEN (current_user <> 'commissions_owner' OR coalesce(current_setting('commissions.engine', true), '') <> 'on')
    EXECUTE FUNCTION guard_engine_columns();
COMMENT ON TRIGGER payout_items_guard ON payout_items IS 'What a payout covers is the engine''s: create_payouts writes it, a failure lets go of it.';

CREATE OR REPLACE TRIGGER commission_program_guard
    BEFORE INSERT OR DELETE ON commission_program
    FOR EACH ROW EXECUTE FUNCTION guard_engine_columns();
COMMENT ON TRIGGER commission_program_guard ON commission_program IS 'The program has one row: UPDATE it.';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['commission_approvals', 'payouts', 'payout_items', 'commission_program'] LOOP
        EXECUTE format('CREATE OR REPLACE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION reject_ledger_change()',
                       t || '_no_truncate', t);
        EXECUTE format('COMMENT ON TRIGGER %I ON %I IS %L', t || '_no_truncate', t,
                       'The lifecycle''s records are never truncated: balances are sums of them.');
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------
-- Views for DBAs
-- ---------------------------------------------------------------------------


CREATE VIEW payable_balances AS
SELECT b.partner_id, p.name AS partner_name, b.currency,
       b.pending, b.approved, b.approved - b.balance AS clawback, b.balance, b.in_payout, b.paid,
       c.payout_minimum,
       b.balance >= c.payout_minimum AS payable_now
  FROM partner_balances b
  JOIN partners p ON p.id = b.partner_id
  JOIN currencies c ON c.code = b.currency;
COMMENT ON VIEW payable_balances IS 'Per partner and currency: what is pending, approved, owed back (clawback), payable (balance), in payouts and paid, and whether the next create_payouts pays it (payable_now).';

CREATE VIEW payouts_with_items AS
SELECT o.id AS payout_id, o.partner_id, o.currency, o.state, o.amount AS payout_amount, o.approved_amount, o.clawback_amount,
       o.provider_reference, o.failure_reason, o.created_at, o.sent_at, o.paid_at, o.failed_at,
       i.commission_id, c.kind, c.stage, c.payment_id, i.amount AS item_amount, i.live
  FROM payouts o
  JOIN payout_items i ON i.payout_id = o.id
  JOIN commissions c ON c.id = i.commission_id;
COMMENT ON VIEW payouts_with_items IS 'Each payout with the ledger entries it covers and what each adds (approvals +, clawback -): SELECT * FROM payouts_with_items WHERE payout_id = 7;';

CREATE VIEW commissions_due_for_approval AS
SELECT d.payment_id, d.partner_id, p.name AS partner_name, d.currency, d.amount, d.earned_at, d.due_at
  FROM due_commissions(now()) d
  JOIN partners p ON p.id = d.partner_id;
COMMENT ON VIEW commissions_due_for_approval IS 'Commissions whose hold period is over and that the next approve_due_commissions(now()) approves.';
