-- The commission engine, in two halves.
--
-- 1. Decide (in the transaction, taking no lock anyone else needs): when
--    payments become verified, or their refunds or disputes change, the
--    engine works out what each commission should be and appends the
--    difference to the ledger (commissions). It runs once per statement
--    over every row the statement wrote (commission_engine, statement
--    triggers with transition tables), so a statement verifying 1,000
--    payments earns them in one INSERT. Only the payments' own rows are locked.
--
-- 2. Publish (at COMMIT, by the deferred constraint trigger
--    commissions_publish): the first call of a transaction publishes all of
--    its new ledger entries at once (publish_commission_entries): positions
--    from one update of the global head, a seq range per partner, balances
--    moved once per partner and currency, the events and notifications, and
--    one NOTIFY per partner (a wake-up: the relay reads the log). PostgreSQL
--    delivers a NOTIFY only on COMMIT, so a dashboard never sees a
--    commission that was rolled back.
--
-- Rules (all amounts rounded to the payment's own minor units, half away
-- from zero):
--   * verified: earned = round(amount * partner's rate). No partner, or a
--     commission that rounds to zero: nothing is written.
--   * refunds and disputes: with R refunded so far and L under lost or
--     funds-withdrawn disputes, the commission reversed in total is
--       round(earned * least(R + L, amount) / amount)
--     and each change appends the difference from what is already reversed
--     (reversed, or reinstated when a dispute is won after its funds were
--     withdrawn). A full refund therefore reverses the exact remainder, and
--     a late, smaller cumulative refund figure changes nothing.
--   * while disputes of D are open, round(earned * D / amount) of what is
--     left is held (held), and released when the dispute ends.
--
--   * the lifecycle (sql/08_lifecycle.sql): every entry records its
--     commission's stage (pending, approved, paid); entry_pending_delta and
--     entry_payable_delta say which totals it moves. Approvals and payouts
--     are published per batch and per payout, through the same publish_event.
--
-- Why publish at commit: the locks that make a partner's seq gapless and the
-- admin position commit-ordered must be held until COMMIT. Taken in the
-- transaction (as v1 did), they let one open transaction (a DBA's BEGIN;
-- SELECT verify_payment(..) left open) stall every verification. Taken at
-- commit they are held for the commit itself. The publisher takes them in
-- one order (event_log_head, then partner_streams rows in partner id order,
-- then partner_balances rows in (partner, currency) order), and these tables
-- are written by the publishers alone, so two commits cannot deadlock on them
-- and no one else's open transaction can hold them.
-- (A session that runs SET CONSTRAINTS commissions_publish IMMEDIATE gets
-- v1's behaviour for its own transaction: publishing at once, holding the
-- position lock until it commits.)

CREATE OR REPLACE FUNCTION partner_channel(p_partner_id bigint)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
-- The explicit ::text matters: text || bigint is anytextcat(), a STABLE SQL
-- function, which would stop this IMMUTABLE one being inlined, and a SQL
-- function that is not inlined is parsed and planned again on every call.
AS $$ SELECT 'commissions_partner_' || p_partner_id::text $$;
COMMENT ON FUNCTION partner_channel(bigint) IS
    'The NOTIFY channel carrying one partner''s events. The admin channel, commissions_admin, carries every event.';

CREATE OR REPLACE FUNCTION partner_last_seq(p_partner_id bigint)
RETURNS bigint
LANGUAGE sql STABLE STRICT
AS $$ SELECT coalesce((SELECT last_seq FROM partner_streams WHERE partner_id = p_partner_id), 0) $$;
COMMENT ON FUNCTION partner_last_seq(bigint) IS
    'The seq of the partner''s latest event, 0 before its first.';

CREATE OR REPLACE FUNCTION balance_totals_json(
    p_earned numeric, p_pending numeric, p_approved numeric, p_balance numeric,
    p_in_payout numeric, p_paid numeric, p_reversed numeric, p_held numeric, p_minor_units smallint)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT jsonb_build_object(
        'earned',    round(p_earned, p_minor_units)::text,
        'pending',   round(p_pending, p_minor_units)::text,
        'approved',  round(p_approved, p_minor_units)::text,
        'balance',   round(p_balance, p_minor_units)::text,
        'in_payout', round(p_in_payout, p_minor_units)::text,
        'paid',      round(p_paid, p_minor_units)::text,
        'reversed',  round(p_reversed, p_minor_units)::text,
        'held',      round(p_held, p_minor_units)::text)
$$;
COMMENT ON FUNCTION balance_totals_json(numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, smallint) IS
    'A partner''s totals in one currency as the wire writes them, with the given minor units (see partner_balance_json).';

-- PL/pgSQL: called by every publisher once per event, and a SQL function
-- taking a row type is not inlined.
CREATE OR REPLACE FUNCTION partner_balance_json(p_balance partner_balances, p_minor_units smallint)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
BEGIN
    RETURN balance_totals_json(p_balance.earned, p_balance.pending, p_balance.approved, p_balance.balance,
                               p_balance.in_payout, p_balance.paid, p_balance.reversed, p_balance.held, p_minor_units);
END
$$;
COMMENT ON FUNCTION partner_balance_json(partner_balances, smallint) IS
    'One partner_balances row as the wire''s totals for its currency, with the given minor units: {"earned": "2.00", "pending": "2.00", "approved": "0.00", "balance": "0.00", "in_payout": "0.00", "paid": "0.00", "reversed": "0.00", "held": "0.00"}.';

CREATE OR REPLACE FUNCTION partner_totals_json(p_partner_id bigint, p_currency char(3))
RETURNS jsonb
LANGUAGE sql STABLE STRICT
AS $$
    SELECT jsonb_build_object(b.currency, partner_balance_json(b, c.minor_units))
    FROM partner_balances b
    JOIN currencies c ON c.code = b.currency
    WHERE b.partner_id = p_partner_id AND b.currency = p_currency
$$;
COMMENT ON FUNCTION partner_totals_json(bigint, char) IS
    'A partner''s totals in one currency as wire JSON: {"NGN": {"earned": "2.00", "pending": "2.00", "approved": "0.00", "balance": "0.00", "in_payout": "0.00", "paid": "0.00", "reversed": "0.00", "held": "0.00"}}.';

CREATE OR REPLACE FUNCTION partner_totals(p_partner_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE STRICT
AS $$
    SELECT coalesce(jsonb_object_agg(b.currency::text, partner_totals_json(b.partner_id, b.currency) -> b.currency::text), '{}'::jsonb)
    FROM partner_balances b
    WHERE b.partner_id = p_partner_id
$$;
COMMENT ON FUNCTION partner_totals(bigint) IS
    'A partner''s totals in every currency as wire JSON ({} before its first commission): what GET /api/partners/{id} and the socket''s ready message both send.';

-- PL/pgSQL rather than SQL: a STRICT SQL function whose body is not strict
-- is never inlined, so PostgreSQL would parse and plan its body again on
-- every call (once per event); PL/pgSQL keeps the compiled expression.
CREATE OR REPLACE FUNCTION commission_event_json(p_event commission_events)
RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT
AS $$
BEGIN
    RETURN jsonb_build_object(
        'type',        p_event.type,
        'position',    p_event.position,
        'partner_id',  p_event.partner_id,
        'seq',         p_event.seq,
        -- Always UTC, whatever the session's TimeZone: live and replayed copies must match.
        'occurred_at', to_char(p_event.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'data',        p_event.data);
END
$$;
COMMENT ON FUNCTION commission_event_json(commission_events) IS
    'An event as it goes on the wire. The relay reads every event, live or replayed, from the log with this one function (a NOTIFY is only a wake-up), so live and replayed events are identical.';

-- ---------------------------------------------------------------------------
-- 1. Decide
-- ---------------------------------------------------------------------------

DROP FUNCTION IF EXISTS record_commission(payments, commission_kind, numeric, numeric, bigint, smallint);
DROP FUNCTION IF EXISTS record_commission(payments, commission_kind, numeric, numeric);
DROP FUNCTION IF EXISTS append_commission_entry(payments, commission_kind, numeric, numeric, text);

-- What an entry does to the totals, by its kind and its commission's stage
-- (commissions.stage): the publisher moves the balances with these, and the
-- audit view sums the ledger with the same two functions.
CREATE OR REPLACE FUNCTION entry_pending_delta(p_kind commission_kind, p_stage text, p_amount numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN p_kind = 'approved' THEN -p_amount
        WHEN p_stage <> 'pending' THEN 0
        WHEN p_kind IN ('earned', 'reinstated') THEN p_amount
        WHEN p_kind = 'reversed' THEN -p_amount
        ELSE 0
    END
$$;
COMMENT ON FUNCTION entry_pending_delta(commission_kind, text, numeric) IS
    'What a ledger entry adds to pending: earned and reinstated +, reversed - while the commission is in its hold period; its approval moves what is left out (-).';

CREATE OR REPLACE FUNCTION entry_payable_delta(p_kind commission_kind, p_stage text, p_amount numeric)
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE
        WHEN p_kind = 'approved' THEN p_amount
        WHEN p_stage = 'pending' THEN 0
        WHEN p_kind IN ('reinstated', 'released') THEN p_amount
        WHEN p_kind IN ('reversed', 'held') THEN -p_amount
        ELSE 0
    END
$$;
COMMENT ON FUNCTION entry_payable_delta(commission_kind, text, numeric) IS
    'What a ledger entry adds to the payable balance: its approval +, then (stage approved or paid) reversals and holds -, reinstatements and releases +. A payout covers entries by these amounts (payout_items.amount).';

CREATE OR REPLACE FUNCTION append_commission_entry(
    p_payment payments,
    p_kind    commission_kind,
    p_amount  numeric,
    p_rate    numeric,
    p_reason  text,
    p_stage   text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    -- Lets the ledger's insert guard (04_ledger_guards.sql) tell the engine from a hand edit.
    PERFORM set_config('commissions.engine', 'on', true);
    INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units, stage)
    VALUES (p_payment.id, p_payment.partner_id, p_kind, p_amount, p_payment.currency, p_rate,
            p_payment.amount, p_reason, p_payment.minor_units, p_stage);
    PERFORM set_config('commissions.engine', '', true);
END
$$;
COMMENT ON FUNCTION append_commission_entry(payments, commission_kind, numeric, numeric, text, text) IS
    'Engine internals: appends one ledger entry for a payment, at its commission''s stage. Its balance, event and NOTIFY follow at commit (publish_commission_entry).';

CREATE OR REPLACE FUNCTION partner_hold_days(p_partner_id bigint)
RETURNS integer
LANGUAGE sql STABLE STRICT
AS $$
    SELECT coalesce(p.hold_days, (SELECT g.default_hold_days FROM commission_program g))
      FROM partners p WHERE p.id = p_partner_id
$$;
COMMENT ON FUNCTION partner_hold_days(bigint) IS
    'The partner''s hold period in days: its own hold_days, or commission_program.default_hold_days.';

CREATE OR REPLACE FUNCTION commission_stage(p_payment_id bigint)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_approval bigint;
BEGIN
    SELECT a.id INTO v_approval FROM commissions a WHERE a.payment_id = p_payment_id AND a.approval_id IS NOT NULL;
    IF v_approval IS NULL THEN
        RETURN 'pending';
    END IF;
    IF EXISTS (SELECT 1 FROM payout_items i WHERE i.commission_id = v_approval AND i.live) THEN
        RETURN 'paid';
    END IF;
    RETURN 'approved';
END
$$;
COMMENT ON FUNCTION commission_stage(bigint) IS
    'The stage of a payment''s commission now: pending (not approved yet), approved (payable), or paid (its approval is in a payout that has not failed).';

CREATE OR REPLACE FUNCTION settle_commission(p_payment_id bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_payment        payments;
    v_earned         commissions;
    v_reversed       numeric;
    v_held           numeric;
    v_lost           numeric;
    v_open           numeric;
    v_basis          numeric;
    v_reversed_goal  numeric;
    v_held_goal      numeric;
    v_stage          text;
BEGIN
    -- The payment's lock serialises every settlement of it: two refunds or
    -- dispute events of one payment take turns and each sees the other's entries.
    SELECT * INTO v_payment FROM payments WHERE id = p_payment_id FOR UPDATE;
    SELECT * INTO v_earned FROM commissions WHERE payment_id = p_payment_id AND kind = 'earned';
    IF NOT FOUND THEN
        RETURN;  -- nothing was earned (no partner, or it rounded to zero)
    END IF;

    SELECT coalesce(sum(amount) FILTER (WHERE kind = 'reversed'), 0)
             - coalesce(sum(amount) FILTER (WHERE kind = 'reinstated'), 0),
           coalesce(sum(amount) FILTER (WHERE kind = 'held'), 0)
             - coalesce(sum(amount) FILTER (WHERE kind = 'released'), 0)
      INTO v_reversed, v_held
      FROM commissions
     WHERE payment_id = p_payment_id AND kind NOT IN ('earned', 'approved');
    SELECT coalesce(sum(amount) FILTER (WHERE state IN ('funds_withdrawn', 'lost')), 0),
           coalesce(sum(amount) FILTER (WHERE state = 'open'), 0)
      INTO v_lost, v_open
      FROM disputes
     WHERE payment_id = p_payment_id;

    v_basis := least(v_payment.amount, v_payment.refunded_amount + v_lost);
    v_reversed_goal := round(v_earned.amount * v_basis / v_payment.amount, v_payment.minor_units);
    v_held_goal := least(
        round(v_earned.amount * least(v_open, v_payment.amount - v_basis) / v_payment.amount, v_payment.minor_units),
        v_earned.amount - v_reversed_goal);

    -- Read under the payment's lock, which approval and payout runs also
    -- take: a reversal after approval comes out of the payable balance, and
    -- one after payout is clawback (the balance goes negative).
    v_stage := commission_stage(p_payment_id);

    -- Entries that lower a total come first, so that no intermediate total
    -- (each one is sent to the partner) holds more than is left.
    IF v_held_goal < v_held THEN
        PERFORM append_commission_entry(v_payment, 'released', v_held - v_held_goal, v_earned.rate, 'dispute', v_stage);
    END IF;
    IF v_reversed_goal > v_reversed THEN
        PERFORM append_commission_entry(v_payment, 'reversed', v_reversed_goal - v_reversed, v_earned.rate, p_reason, v_stage);
    ELSIF v_reversed_goal < v_reversed THEN
        PERFORM append_commission_entry(v_payment, 'reinstated', v_reversed - v_reversed_goal, v_earned.rate, p_reason, v_stage);
    END IF;
    IF v_held_goal > v_held THEN
        PERFORM append_commission_entry(v_payment, 'held', v_held_goal - v_held, v_earned.rate, 'dispute', v_stage);
    END IF;
END
$$;
COMMENT ON FUNCTION settle_commission(bigint, text) IS
    'The refund and dispute rules: recomputes what of a payment''s commission is reversed (round(earned * least(refunded + lost disputes, amount) / amount)) and held (open disputes), and appends the differences to the ledger. Idempotent: calling it again appends nothing.';

-- Set-based: the engine runs once per statement, over every row the
-- statement wrote (transition tables), so a DBA's UPDATE payments SET status
-- = 'verified' WHERE ... verifying 1,000 payments earns them in one INSERT,
-- and one verify_payment(id) is a set of one. The order within a payment is
-- as it always was: earned, disputes recorded before verification, parked
-- provider events, approval at a hold of 0 days. Across payments of one
-- statement each step runs for all of them before the next (so a statement
-- verifying two payments writes both earned entries first). Refunds and
-- disputes stay per payment (settle_commission): each is its own small sum
-- under its payment's lock, and a provider sends them one at a time.
CREATE OR REPLACE FUNCTION commission_engine()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_verified bigint[];  -- payments this statement verified, in id order
    v_refunded bigint[];  -- payments whose refunded_amount this statement changed
    v_earned   bigint[];  -- of the verified, those that earned a commission
    v_due      bigint[];  -- of those, the ones whose partner's hold period is 0 days
    r          record;
BEGIN
    -- Two triggers call this function: an INSERT has no old rows.
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n.id ORDER BY n.id) INTO v_verified
          FROM new_payments n WHERE n.status = 'verified';
    ELSE
        SELECT array_agg(n.id ORDER BY n.id) FILTER (WHERE n.status = 'verified' AND o.status = 'pending'),
               array_agg(n.id ORDER BY n.id) FILTER (WHERE n.refunded_amount <> o.refunded_amount)
          INTO v_verified, v_refunded
          FROM new_payments n JOIN old_payments o ON o.id = n.id;
    END IF;

    IF v_verified IS NOT NULL THEN
        -- Earned: round(amount * rate) in the payment's own minor units, for
        -- its partner; no partner, or a commission that rounds to zero, earns
        -- nothing. No lock on the partners: a rate is read as of this
        -- statement, and a concurrent rate change applies to later payments.
        PERFORM set_config('commissions.engine', 'on', true);
        WITH earned AS (
            INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units, stage)
            SELECT n.id, n.partner_id, 'earned', c.amount, n.currency, p.commission_rate, n.amount, 'verified', n.minor_units, 'pending'
              FROM new_payments n
              JOIN partners p ON p.id = n.partner_id
             CROSS JOIN LATERAL (SELECT round(n.amount * p.commission_rate, n.minor_units) AS amount) c
             WHERE n.id = ANY (v_verified) AND c.amount > 0
             ORDER BY n.id
            RETURNING payment_id, partner_id
        )
        SELECT array_agg(e.payment_id ORDER BY e.payment_id),
               array_agg(e.payment_id ORDER BY e.payment_id) FILTER (WHERE EXISTS (
                   -- partner_hold_days(), spelled out: a SQL function with a subquery is planned per call.
                   SELECT 1 FROM partners p CROSS JOIN commission_program g
                    WHERE p.id = e.partner_id AND coalesce(p.hold_days, g.default_hold_days) = 0))
          INTO v_earned, v_due
          FROM earned e;
        PERFORM set_config('commissions.engine', '', true);

        -- Disputes a DBA recorded before the payment was verified.
        FOR r IN SELECT DISTINCT d.payment_id FROM disputes d WHERE d.payment_id = ANY (v_earned) ORDER BY d.payment_id LOOP
            PERFORM settle_commission(r.payment_id, 'dispute');
        END LOOP;

        -- Provider events that arrived before the payment (refunds, disputes) apply now.
        FOR r IN
            SELECT n.provider, n.provider_reference
              FROM new_payments n
             WHERE n.id = ANY (v_verified) AND n.provider <> 'manual' AND n.provider_reference IS NOT NULL
               AND EXISTS (SELECT 1 FROM webhook_events w
                            WHERE w.provider = n.provider AND w.reference = n.provider_reference AND w.outcome = 'parked')
             ORDER BY n.id
        LOOP
            PERFORM apply_parked_events(r.provider, r.provider_reference);
        END LOOP;

        -- A hold of 0 days: approved at once, after what the parked events
        -- reversed; one approval batch per partner and currency.
        IF v_due IS NOT NULL THEN
            PERFORM approve_commissions(v_due, now());
        END IF;
    END IF;

    FOR r IN SELECT u.id FROM unnest(v_refunded) AS u (id) ORDER BY u.id LOOP
        PERFORM settle_commission(r.id, 'refund');
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION commission_engine() IS
    'The commission rules (statement trigger function on payments, over the statement''s transition tables): every payment the statement verified earns round(amount * rate) for its partner in one INSERT, takes any provider events parked for it, and is approved at once if its partner''s hold period is 0 days; each refunded payment settles its commission in proportion (settle_commission).';

DROP TRIGGER IF EXISTS payments_commission_engine ON payments;
CREATE OR REPLACE TRIGGER payments_commission_engine_insert
    AFTER INSERT ON payments
    REFERENCING NEW TABLE AS new_payments
    FOR EACH STATEMENT
    EXECUTE FUNCTION commission_engine();
COMMENT ON TRIGGER payments_commission_engine_insert ON payments IS
    'Runs the commission engine once per INSERT, over every payment it recorded as verified.';
CREATE OR REPLACE TRIGGER payments_commission_engine_update
    AFTER UPDATE ON payments
    REFERENCING OLD TABLE AS old_payments NEW TABLE AS new_payments
    FOR EACH STATEMENT
    EXECUTE FUNCTION commission_engine();
COMMENT ON TRIGGER payments_commission_engine_update ON payments IS
    'Runs the commission engine once per UPDATE, over every payment it verified or refunded (a DBA''s multi-row UPDATE included).';

CREATE OR REPLACE FUNCTION disputes_settle()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM settle_commission(NEW.payment_id, 'dispute');
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION disputes_settle() IS
    'Trigger function: a dispute recorded or moved to another state settles its payment''s commission.';

CREATE OR REPLACE FUNCTION dispute_state_rank(p_state text)
RETURNS int
LANGUAGE sql IMMUTABLE STRICT
AS $$ SELECT CASE p_state WHEN 'open' THEN 1 WHEN 'funds_withdrawn' THEN 2 WHEN 'won' THEN 3 WHEN 'lost' THEN 3 END $$;
COMMENT ON FUNCTION dispute_state_rank(text) IS
    'Dispute states in the order they can happen: open 1, funds_withdrawn 2, won or lost 3 (final). A dispute moves only to a higher rank.';

CREATE OR REPLACE FUNCTION disputes_check_change()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'dispute % of payment % cannot be deleted: the ledger settled it; record its end instead (state won or lost)',
            OLD.dispute_id, OLD.payment_id USING ERRCODE = 'CM003';
    END IF;
    IF (NEW.provider, NEW.dispute_id, NEW.payment_id) IS DISTINCT FROM (OLD.provider, OLD.dispute_id, OLD.payment_id) THEN
        RAISE EXCEPTION 'dispute %: its provider, id and payment cannot change', OLD.dispute_id USING ERRCODE = 'CM001';
    END IF;
    IF dispute_state_rank(NEW.state) < dispute_state_rank(OLD.state)
       OR (dispute_state_rank(OLD.state) = 3 AND NEW.state <> OLD.state) THEN
        RAISE EXCEPTION 'dispute %: % -> % goes backwards (open -> funds_withdrawn -> won or lost)',
            OLD.dispute_id, OLD.state, NEW.state USING ERRCODE = 'CM001';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION disputes_check_change() IS
    'Trigger function: a dispute only moves forward (open -> funds_withdrawn -> won or lost), keeps its payment, and is never deleted.';

CREATE OR REPLACE TRIGGER disputes_check_change
    BEFORE UPDATE OR DELETE ON disputes
    FOR EACH ROW EXECUTE FUNCTION disputes_check_change();
COMMENT ON TRIGGER disputes_check_change ON disputes IS
    'Keeps disputes moving forward only, whoever writes them.';

CREATE OR REPLACE TRIGGER disputes_settle
    AFTER INSERT OR UPDATE OF state, amount ON disputes
    FOR EACH ROW EXECUTE FUNCTION disputes_settle();
COMMENT ON TRIGGER disputes_settle ON disputes IS
    'Holds, reverses or reinstates the commission as the dispute moves.';

-- ---------------------------------------------------------------------------
-- 2. Publish, at commit
-- ---------------------------------------------------------------------------

-- The NOTIFY is a wake-up only: the relay reads the events from the log by
-- its cursor (src/realtime/feed.rs) and never reads a payload, which any
-- login could forge. Every NOTIFY of a transaction on a channel carries the
-- same payload (the transaction's id), and PostgreSQL folds identical
-- notifications of one transaction into one: so whatever a transaction
-- publishes, each partner's channel gets one NOTIFY, and the admin channel one.
CREATE OR REPLACE FUNCTION notify_wake_up(p_partner_id bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_payload text := pg_current_xact_id()::text;
BEGIN
    PERFORM pg_notify(partner_channel(p_partner_id), v_payload);
    PERFORM pg_notify('commissions_admin', v_payload);
END
$$;
COMMENT ON FUNCTION notify_wake_up(bigint) IS
    'Engine internals: wakes the relays listening on the partner''s channel and on commissions_admin. The payload is the transaction id, the same for every call of a transaction, so PostgreSQL delivers one NOTIFY per channel per transaction; it means nothing (the relay reads the log).';

-- The one place balances move: rows of deltas (partner_balances shaped,
-- updated_at ignored), added in the order given, which every caller makes
-- (partner, currency) order, the lock order.
CREATE OR REPLACE FUNCTION move_partner_balances(p_deltas partner_balances[])
RETURNS SETOF partner_balances
LANGUAGE plpgsql
-- PL/pgSQL: a SQL function that writes is planned again on every call; this
-- one keeps its plan.
AS $$
BEGIN
    RETURN QUERY
    INSERT INTO partner_balances AS b (partner_id, currency, earned, pending, reversed, held, approved, balance, in_payout, paid)
    SELECT d.partner_id, d.currency, d.earned, d.pending, d.reversed, d.held, d.approved, d.balance, d.in_payout, d.paid
      FROM unnest(p_deltas) WITH ORDINALITY AS d
     ORDER BY d.ordinality
    ON CONFLICT (partner_id, currency) DO UPDATE
       SET earned     = b.earned + EXCLUDED.earned,
           pending    = b.pending + EXCLUDED.pending,
           reversed   = b.reversed + EXCLUDED.reversed,
           held       = b.held + EXCLUDED.held,
           approved   = b.approved + EXCLUDED.approved,
           balance    = b.balance + EXCLUDED.balance,
           in_payout  = b.in_payout + EXCLUDED.in_payout,
           paid       = b.paid + EXCLUDED.paid,
           updated_at = now()
    RETURNING b.*;
END
$$;
COMMENT ON FUNCTION move_partner_balances(partner_balances[]) IS
    'Engine internals (the publishers, at commit): adds each row of deltas to its partner''s balance in its currency, in the order given (callers give (partner, currency) order), and returns the new totals.';

-- What the per-event publishers (approvals, payouts) do for one event,
-- inside the commit: from its first lock to the end of COMMIT every
-- publishing transaction takes turns (as they do on PostgreSQL's own notify
-- lock), so keep it short. Lock order, for every event of every kind:
-- event_log_head, then the partner's partner_streams row, then its
-- partner_balances row. Since every publisher takes event_log_head first
-- and holds it to the end of COMMIT, no two publishers ever wait on each
-- other's partner rows. Ledger entries are published in sets instead
-- (publish_commission_entries), in the same lock order.
-- p_commission_id became the 15th argument.
DROP FUNCTION IF EXISTS publish_event(bigint, char, text, jsonb, text, text, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric);
CREATE OR REPLACE FUNCTION publish_event(
    p_partner_id bigint,
    p_currency   char(3),
    p_type       text,
    p_data       jsonb,
    p_title      text,
    p_body       text,
    p_earned     numeric,
    p_pending    numeric,
    p_reversed   numeric,
    p_held       numeric,
    p_approved   numeric,
    p_balance    numeric,
    p_in_payout  numeric,
    p_paid       numeric,
    p_commission_id bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    -- Totals mix payments recorded with different minor units if an operator
    -- changed the currency's; they are written as money_text() writes them
    -- (the currency's units now), so the socket and the REST API agree.
    t          smallint := (SELECT minor_units FROM currencies WHERE code = p_currency);
    v_position bigint;
    v_seq      bigint;
    v_balance  partner_balances;
BEGIN
    -- Lets the guards in 04_ledger_guards.sql tell the engine from a hand edit.
    PERFORM set_config('commissions.engine', 'on', true);

    -- Held to the end of this COMMIT: positions and seqs are in commit order, gapless.
    UPDATE event_log_head SET position = position + 1 RETURNING position INTO v_position;
    -- A ledger entry (p_commission_id) is marked published, as publish_commission_entries does.
    INSERT INTO partner_streams AS s (partner_id, last_seq, last_commission_id, last_xact)
    VALUES (p_partner_id, 1, p_commission_id, CASE WHEN p_commission_id IS NOT NULL THEN pg_current_xact_id() END)
    ON CONFLICT (partner_id) DO UPDATE
       SET last_seq = s.last_seq + 1,
           last_commission_id = coalesce(EXCLUDED.last_commission_id, s.last_commission_id),
           last_xact = coalesce(EXCLUDED.last_xact, s.last_xact)
    RETURNING s.last_seq INTO v_seq;

    SELECT * INTO v_balance FROM move_partner_balances(ARRAY[
        ROW(p_partner_id, p_currency, p_earned, p_pending, p_paid, p_reversed, now(), p_held, p_approved, p_balance, p_in_payout)::partner_balances]);

    INSERT INTO commission_events (position, partner_id, seq, type, data, occurred_at)
    VALUES (v_position, p_partner_id, v_seq, p_type,
            p_data || jsonb_build_object('totals', jsonb_build_object(p_currency, partner_balance_json(v_balance, t))),
            now());

    INSERT INTO notifications (partner_id, event_position, title, body)
    VALUES (p_partner_id, v_position, p_title, p_body);

    PERFORM notify_wake_up(p_partner_id);
    PERFORM set_config('commissions.engine', '', true);
END
$$;
COMMENT ON FUNCTION publish_event(bigint, char, text, jsonb, text, text, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric, bigint) IS
    'Engine internals (called at commit by the deferred publishers): takes the next global position and the partner''s next seq, adds the deltas to the partner''s balance in that currency, writes the event (its data plus the new totals) and the notification, and wakes the partner''s and the admin channel (notify_wake_up: one NOTIFY per channel per transaction). For a ledger entry (p_commission_id) it also marks the entry published in partner_streams.';

-- The wire's words for a ledger entry, by its kind: the event type, and the
-- partner's notification.
CREATE OR REPLACE FUNCTION commission_entry_event_type(p_kind commission_kind)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE p_kind
        WHEN 'earned'     THEN 'commission.created'
        WHEN 'reversed'   THEN 'commission.reversed'
        WHEN 'reinstated' THEN 'commission.reinstated'
        WHEN 'held'       THEN 'commission.held'
        ELSE                   'commission.released'
    END
$$;
COMMENT ON FUNCTION commission_entry_event_type(commission_kind) IS
    'The event type a ledger entry is published as: commission.created, .reversed, .reinstated, .held or .released.';

CREATE OR REPLACE FUNCTION commission_entry_title(p_kind commission_kind)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE p_kind
        WHEN 'earned'     THEN 'Commission earned'
        WHEN 'reversed'   THEN 'Commission reversed'
        WHEN 'reinstated' THEN 'Commission reinstated'
        WHEN 'held'       THEN 'Commission on hold'
        ELSE                   'Commission released'
    END
$$;
COMMENT ON FUNCTION commission_entry_title(commission_kind) IS 'The title of the partner''s notification for a ledger entry.';

CREATE OR REPLACE FUNCTION commission_entry_body(p_kind commission_kind, p_amount_text text, p_currency char(3), p_payment_id bigint, p_reason text)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE p_kind
        WHEN 'earned'     THEN format('You earned %s %s on payment %s.', p_amount_text, p_currency, p_payment_id)
        WHEN 'reversed'   THEN format('%s %s was reversed: payment %s was %s.', p_amount_text, p_currency, p_payment_id,
                                      CASE p_reason WHEN 'dispute' THEN 'charged back' ELSE 'refunded' END)
        WHEN 'reinstated' THEN format('%s %s was reinstated: the dispute of payment %s was won.', p_amount_text, p_currency, p_payment_id)
        WHEN 'held'       THEN format('%s %s is on hold while payment %s is disputed.', p_amount_text, p_currency, p_payment_id)
        ELSE                   format('%s %s is no longer on hold: the dispute of payment %s ended.', p_amount_text, p_currency, p_payment_id)
    END
$$;
COMMENT ON FUNCTION commission_entry_body(commission_kind, text, char, bigint, text) IS
    'The sentence of the partner''s notification for a ledger entry, e.g. "You earned 2.00 NGN on payment 7."';

-- The same publication for one entry, through publish_event: what a
-- transaction with a single entry (one verification, one refund) takes,
-- since the set statements cost more than they save for one row.
CREATE OR REPLACE FUNCTION publish_one_commission_entry(c commissions)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_amount_text text := round(c.amount, c.minor_units)::text;
    v_payable     numeric := entry_payable_delta(c.kind, c.stage, c.amount);
BEGIN
    PERFORM publish_event(
        c.partner_id, c.currency, commission_entry_event_type(c.kind),
        jsonb_build_object(
            'commission_id',  c.id,
            'payment_id',     c.payment_id,
            'kind',           c.kind,
            'reason',         c.reason,
            'stage',          c.stage,
            'amount',         v_amount_text,
            'currency',       c.currency,
            'rate',           trim_scale(c.rate)::text,
            'payment_amount', round(c.payment_amount, c.minor_units)::text),
        commission_entry_title(c.kind),
        commission_entry_body(c.kind, v_amount_text, c.currency, c.payment_id, c.reason),
        CASE c.kind WHEN 'earned' THEN c.amount ELSE 0 END,
        entry_pending_delta(c.kind, c.stage, c.amount),
        CASE c.kind WHEN 'reversed' THEN c.amount WHEN 'reinstated' THEN -c.amount ELSE 0 END,
        CASE c.kind WHEN 'held' THEN c.amount WHEN 'released' THEN -c.amount ELSE 0 END,
        CASE WHEN c.stage = 'approved' THEN v_payable ELSE 0 END,
        v_payable,
        0,
        0,
        c.id);
END
$$;
COMMENT ON FUNCTION publish_one_commission_entry(commissions) IS
    'Engine internals (at COMMIT, from publish_commission_entries when a transaction has one entry): publishes it through publish_event, exactly as the set statements would.';

-- Every ledger entry of a transaction, published at once: the first
-- deferred call of the transaction (commissions_publish, at COMMIT) gets
-- here, and the later calls find their entry published and return. In sets,
-- in the one lock order (event_log_head; partner_streams rows in partner id
-- order; partner_balances rows in (partner, currency) order):
--   1. positions: one update of event_log_head takes as many as there are entries;
--   2. seqs: one range per partner (row_number() over each partner's entries);
--   3. balances: one upsert per partner and currency, and each event carries
--      the totals as they were just after it (a running sum over the entries);
--   4. the events, and the notifications, one INSERT each;
--   5. one NOTIFY per partner, and one on the admin channel.
-- Entries are published in ledger order (id): positions, and each partner's
-- seqs, follow the order the engine wrote them in, which is payment order
-- for a statement that verifies many. Approvals and payouts of the same
-- transaction are published after its entries (their own deferred triggers).
CREATE OR REPLACE FUNCTION publish_commission_entries(p_from_id bigint)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    v_xact     xid8 := pg_current_xact_id();
    v_entries  commissions[];
    v_count    integer;
    v_head     bigint;    -- the position before the batch's first
    v_partners bigint[];  -- the batch's partners, in id order
    v_seq_base bigint[];  -- and each one's seq before the batch
BEGIN
    -- The batch: every entry this transaction appended from p_from_id on.
    -- Entries of earlier calls have lower ids (a session's ids only grow),
    -- and approvals are published per batch (commission_approvals_publish).
    SELECT array_agg(c ORDER BY c.id), count(*) INTO v_entries, v_count
      FROM commissions c
     -- BETWEEN, not >=: its estimate is small without the value, so the
     -- plan (an index range scan) is kept instead of planned per call.
     WHERE c.id BETWEEN p_from_id AND 9223372036854775807 AND c.xact_id = v_xact AND c.kind <> 'approved';
    IF v_count = 0 THEN
        RETURN 0;
    END IF;
    IF v_count = 1 THEN
        -- A set of one (one payment, one refund): the per-event publisher
        -- does the same in fewer, smaller statements.
        PERFORM publish_one_commission_entry(v_entries[1]);
        RETURN 1;
    END IF;
    -- Lets the guards in 04_ledger_guards.sql tell the engine from a hand edit.
    PERFORM set_config('commissions.engine', 'on', true);

    -- 1. Held to the end of this COMMIT: positions and seqs are in commit order, gapless.
    UPDATE event_log_head SET position = position + v_count RETURNING position - v_count INTO v_head;

    -- 2. One seq range per partner, rows locked in partner id order.
    WITH per_partner AS (
        SELECT e.partner_id, count(*) AS n, max(e.id) AS last_id
          FROM unnest(v_entries) e
         GROUP BY e.partner_id
    ), bumped AS (
        INSERT INTO partner_streams AS s (partner_id, last_seq, last_commission_id, last_xact)
        SELECT k.partner_id, k.n, k.last_id, v_xact FROM per_partner k ORDER BY k.partner_id
        ON CONFLICT (partner_id) DO UPDATE
           SET last_seq = s.last_seq + EXCLUDED.last_seq,
               last_commission_id = EXCLUDED.last_commission_id,
               last_xact = EXCLUDED.last_xact
        RETURNING s.partner_id, s.last_seq
    )
    SELECT array_agg(b.partner_id ORDER BY b.partner_id), array_agg(b.last_seq - k.n ORDER BY b.partner_id)
      INTO v_partners, v_seq_base
      FROM bumped b JOIN per_partner k ON k.partner_id = b.partner_id;

    -- 3 and 4. What each entry moves (the same rules as the audit view), the
    -- balances moved once per partner and currency, then the events with
    -- the totals as of each one, and the notifications.
    WITH e AS (
        SELECT x.*, d.*,
               v_head + row_number() OVER (ORDER BY x.id) AS position,
               s.base + row_number() OVER (PARTITION BY x.partner_id ORDER BY x.id) AS seq,
               round(x.amount, x.minor_units)::text AS amount_text
          FROM unnest(v_entries) x
          JOIN unnest(v_partners, v_seq_base) AS s (partner_id, base) ON s.partner_id = x.partner_id
         CROSS JOIN LATERAL (
             SELECT CASE x.kind WHEN 'earned' THEN x.amount ELSE 0 END AS d_earned,
                    entry_pending_delta(x.kind, x.stage, x.amount) AS d_pending,
                    CASE x.kind WHEN 'reversed' THEN x.amount WHEN 'reinstated' THEN -x.amount ELSE 0 END AS d_reversed,
                    CASE x.kind WHEN 'held' THEN x.amount WHEN 'released' THEN -x.amount ELSE 0 END AS d_held,
                    CASE WHEN x.stage = 'approved' THEN entry_payable_delta(x.kind, x.stage, x.amount) ELSE 0 END AS d_approved,
                    entry_payable_delta(x.kind, x.stage, x.amount) AS d_balance) d
    ), after_each AS (
        -- What is still to come after each entry in its partner and currency:
        -- the totals as of an entry are the new totals less that.
        SELECT e.*,
               sum(e.d_earned)   OVER later AS later_earned,
               sum(e.d_pending)  OVER later AS later_pending,
               sum(e.d_reversed) OVER later AS later_reversed,
               sum(e.d_held)     OVER later AS later_held,
               sum(e.d_approved) OVER later AS later_approved,
               sum(e.d_balance)  OVER later AS later_balance
          FROM e
        WINDOW later AS (PARTITION BY e.partner_id, e.currency ORDER BY e.id ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)
    ), moved AS (
        SELECT m.* FROM move_partner_balances((
            SELECT array_agg(ROW(g.partner_id, g.currency, g.earned, g.pending, 0, g.reversed, now(), g.held, g.approved, g.balance, 0)::partner_balances
                             ORDER BY g.partner_id, g.currency)
              FROM (SELECT e.partner_id, e.currency, sum(e.d_earned) AS earned, sum(e.d_pending) AS pending,
                           sum(e.d_reversed) AS reversed, sum(e.d_held) AS held, sum(e.d_approved) AS approved,
                           sum(e.d_balance) AS balance
                      FROM e GROUP BY e.partner_id, e.currency) g)) m
    ), events AS (
        INSERT INTO commission_events (position, partner_id, seq, type, data, occurred_at)
        SELECT a.position, a.partner_id, a.seq, commission_entry_event_type(a.kind),
               jsonb_build_object(
                   'commission_id',  a.id,
                   'payment_id',     a.payment_id,
                   'kind',           a.kind,
                   'reason',         a.reason,
                   'stage',          a.stage,
                   'amount',         a.amount_text,
                   'currency',       a.currency,
                   'rate',           trim_scale(a.rate)::text,
                   'payment_amount', round(a.payment_amount, a.minor_units)::text,
                   -- Written as money_text() writes them (the currency's units now), as publish_event does.
                   'totals', jsonb_build_object(a.currency, balance_totals_json(
                       m.earned - coalesce(a.later_earned, 0),
                       m.pending - coalesce(a.later_pending, 0),
                       m.approved - coalesce(a.later_approved, 0),
                       m.balance - coalesce(a.later_balance, 0),
                       m.in_payout, m.paid,
                       m.reversed - coalesce(a.later_reversed, 0),
                       m.held - coalesce(a.later_held, 0),
                       t.minor_units))),
               now()
          FROM after_each a
          JOIN moved m ON m.partner_id = a.partner_id AND m.currency = a.currency
          JOIN currencies t ON t.code = a.currency
         ORDER BY a.position
        RETURNING position
    )
    INSERT INTO notifications (partner_id, event_position, title, body)
    SELECT e.partner_id, e.position, commission_entry_title(e.kind),
           commission_entry_body(e.kind, e.amount_text, e.currency, e.payment_id, e.reason)
      FROM e JOIN events v ON v.position = e.position
     ORDER BY e.position;

    -- 5. One wake-up per partner (notify_wake_up's payloads fold), and one for the admin channel.
    PERFORM notify_wake_up(p.partner_id) FROM unnest(v_partners) AS p (partner_id);
    PERFORM set_config('commissions.engine', '', true);
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION publish_commission_entries(bigint) IS
    'Engine internals (at COMMIT): publishes every ledger entry this transaction appended from p_from_id on, in set-based statements: positions from one event_log_head update, a seq range per partner, balances moved once per partner and currency, the events (each with the totals as of it) and notifications in one INSERT each, one NOTIFY per partner and one on the admin channel. Returns how many it published.';

CREATE OR REPLACE FUNCTION publish_commission_entry()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- Published already by an earlier call of this transaction? Only the
    -- publisher writes partner_streams, so this cannot be faked by a setting.
    IF EXISTS (SELECT 1 FROM partner_streams s
                WHERE s.partner_id = NEW.partner_id AND s.last_xact = pg_current_xact_id()
                  AND s.last_commission_id >= NEW.id) THEN
        RETURN NULL;
    END IF;
    PERFORM publish_commission_entries(NEW.id);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION publish_commission_entry() IS
    'Engine internals (deferred trigger on commissions, at commit): the first call of a transaction publishes all of its ledger entries (publish_commission_entries); the later calls find theirs published and return. Approved entries are published per batch instead (publish_commission_approval).';

DROP TRIGGER IF EXISTS commissions_publish ON commissions;
CREATE CONSTRAINT TRIGGER commissions_publish
    AFTER INSERT ON commissions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.kind <> 'approved')
    EXECUTE FUNCTION publish_commission_entry();
COMMENT ON TRIGGER commissions_publish ON commissions IS
    'Publishes the transaction''s ledger entries at COMMIT, all at once on the first call (see the head of sql/03_commission_engine.sql), so the locks that order events are held for the commit only. Approved entries are published per approval batch (commission_approvals_publish), not one by one.';

DROP FUNCTION IF EXISTS commission_event_position_lock_key();
