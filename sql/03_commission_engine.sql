-- The commission engine, in two halves.
--
-- 1. Decide (in the transaction, taking no lock anyone else needs): when a
--    payment becomes verified, or its refunds or disputes change, the engine
--    works out what the commission should be and appends the difference to
--    the ledger (commissions). Only the payment's own row is locked.
--
-- 2. Publish (at COMMIT, by the deferred constraint trigger
--    commissions_publish): for each new ledger entry, take the next global
--    position and the partner's next seq, update the partner's balance, write
--    the event and the notification, and NOTIFY. PostgreSQL delivers a NOTIFY
--    only on COMMIT, so a dashboard never sees a commission that was rolled
--    back.
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
-- one order (event_log_head, then partner_streams), and both tables are
-- written by the publisher alone, so two commits cannot deadlock on them
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

-- PL/pgSQL: called by every publisher once per event, and a SQL function
-- taking a row type is not inlined.
CREATE OR REPLACE FUNCTION partner_balance_json(p_balance partner_balances, p_minor_units smallint)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
BEGIN
    RETURN jsonb_build_object(
        'earned',    round(p_balance.earned, p_minor_units)::text,
        'pending',   round(p_balance.pending, p_minor_units)::text,
        'approved',  round(p_balance.approved, p_minor_units)::text,
        'balance',   round(p_balance.balance, p_minor_units)::text,
        'in_payout', round(p_balance.in_payout, p_minor_units)::text,
        'paid',      round(p_balance.paid, p_minor_units)::text,
        'reversed',  round(p_balance.reversed, p_minor_units)::text,
        'held',      round(p_balance.held, p_minor_units)::text);
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
    'An event as it goes on the wire. The NOTIFY payload and every replay from the log use this one function, so live and replayed events are identical.';

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

CREATE OR REPLACE FUNCTION commission_engine()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_rate   numeric;
    v_amount numeric;
BEGIN
    IF NEW.status = 'verified' AND (TG_OP = 'INSERT' OR OLD.status = 'pending') THEN
        IF NEW.partner_id IS NOT NULL THEN
            -- No lock on the partner: the rate is read as of this statement, and
            -- a concurrent rate change applies to later payments.
            SELECT commission_rate INTO v_rate FROM partners WHERE id = NEW.partner_id;
            v_amount := round(NEW.amount * v_rate, NEW.minor_units);
            IF v_amount > 0 THEN
                PERFORM append_commission_entry(NEW, 'earned', v_amount, v_rate, 'verified', 'pending');
                -- A dispute a DBA recorded before the payment was verified.
                IF EXISTS (SELECT 1 FROM disputes d WHERE d.payment_id = NEW.id) THEN
                    PERFORM settle_commission(NEW.id, 'dispute');
                END IF;
            END IF;
        END IF;
        -- Provider events that arrived before the payment (refunds, disputes) apply now.
        IF NEW.provider <> 'manual' AND NEW.provider_reference IS NOT NULL THEN
            PERFORM apply_parked_events(NEW.provider, NEW.provider_reference);
        END IF;
        -- A hold of 0 days: approved at once, after what the parked events reversed.
        IF v_amount > 0 AND partner_hold_days(NEW.partner_id) = 0 THEN
            PERFORM approve_commissions(ARRAY[NEW.id], now());
        END IF;
    ELSIF TG_OP = 'UPDATE' AND NEW.refunded_amount <> OLD.refunded_amount THEN
        PERFORM settle_commission(NEW.id, 'refund');
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION commission_engine() IS
    'The commission rules (trigger function on payments): a payment that becomes verified earns round(amount * rate) for its partner, takes any provider events parked for it, and is approved at once if the partner''s hold period is 0 days; a refund settles the commission in proportion (settle_commission).';

DROP TRIGGER IF EXISTS payments_commission_engine ON payments;
CREATE TRIGGER payments_commission_engine
    AFTER INSERT OR UPDATE ON payments
    FOR EACH ROW
    WHEN (NEW.status IN ('verified', 'refunded'))
    EXECUTE FUNCTION commission_engine();
COMMENT ON TRIGGER payments_commission_engine ON payments IS
    'Runs the commission engine in the transaction that verifies or refunds a payment.';

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

-- What every publisher does for one event, inside the commit: from its
-- first lock to the end of COMMIT every publishing transaction takes turns
-- (as they do on PostgreSQL's own notify lock), so keep it short. Lock
-- order, for every event of every kind: event_log_head, then the partner's
-- partner_streams row, then its partner_balances row. A transaction with
-- events for several partners publishes them in the order they were queued;
-- since each takes event_log_head first and holds it to the end of COMMIT,
-- no two publishers ever wait on each other's partner rows.
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
    p_paid       numeric)
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
    v_event    text;
BEGIN
    -- Lets the guards in 04_ledger_guards.sql tell the engine from a hand edit.
    PERFORM set_config('commissions.engine', 'on', true);

    -- Held to the end of this COMMIT: positions and seqs are in commit order, gapless.
    UPDATE event_log_head SET position = position + 1 RETURNING position INTO v_position;
    INSERT INTO partner_streams AS s (partner_id, last_seq) VALUES (p_partner_id, 1)
    ON CONFLICT (partner_id) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO v_seq;

    INSERT INTO partner_balances AS b (partner_id, currency, earned, pending, reversed, held, approved, balance, in_payout, paid)
    VALUES (p_partner_id, p_currency, p_earned, p_pending, p_reversed, p_held, p_approved, p_balance, p_in_payout, p_paid)
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
    RETURNING b.* INTO v_balance;

    INSERT INTO commission_events (position, partner_id, seq, type, data, occurred_at)
    VALUES (v_position, p_partner_id, v_seq, p_type,
            p_data || jsonb_build_object('totals', jsonb_build_object(p_currency, partner_balance_json(v_balance, t))),
            now())
    RETURNING commission_event_json(commission_events)::text INTO v_event;

    INSERT INTO notifications (partner_id, event_position, title, body)
    VALUES (p_partner_id, v_position, p_title, p_body);

    PERFORM pg_notify(partner_channel(p_partner_id), v_event);
    PERFORM pg_notify('commissions_admin', v_event);
    PERFORM set_config('commissions.engine', '', true);
END
$$;
COMMENT ON FUNCTION publish_event(bigint, char, text, jsonb, text, text, numeric, numeric, numeric, numeric, numeric, numeric, numeric, numeric) IS
    'Engine internals (called at commit by the deferred publishers): takes the next global position and the partner''s next seq, adds the deltas to the partner''s balance in that currency, writes the event (its data plus the new totals) and the notification, and NOTIFYs the partner''s and the admin channel.';

-- Amounts are formatted with round(x, units)::text, exactly what
-- money_text() returns without its currency lookup.
CREATE OR REPLACE FUNCTION publish_commission_entry()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    c             commissions := NEW;
    v_amount_text text := round(NEW.amount, NEW.minor_units)::text;
    v_payable     numeric := entry_payable_delta(NEW.kind, NEW.stage, NEW.amount);
BEGIN
    PERFORM publish_event(
        c.partner_id, c.currency,
        CASE c.kind
            WHEN 'earned'     THEN 'commission.created'
            WHEN 'reversed'   THEN 'commission.reversed'
            WHEN 'reinstated' THEN 'commission.reinstated'
            WHEN 'held'       THEN 'commission.held'
            ELSE                   'commission.released'
        END,
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
        CASE c.kind
            WHEN 'earned'     THEN 'Commission earned'
            WHEN 'reversed'   THEN 'Commission reversed'
            WHEN 'reinstated' THEN 'Commission reinstated'
            WHEN 'held'       THEN 'Commission on hold'
            ELSE                   'Commission released'
        END,
        CASE c.kind
            WHEN 'earned'     THEN format('You earned %s %s on payment %s.', v_amount_text, c.currency, c.payment_id)
            WHEN 'reversed'   THEN format('%s %s was reversed: payment %s was %s.', v_amount_text, c.currency, c.payment_id,
                                          CASE c.reason WHEN 'dispute' THEN 'charged back' ELSE 'refunded' END)
            WHEN 'reinstated' THEN format('%s %s was reinstated: the dispute of payment %s was won.', v_amount_text, c.currency, c.payment_id)
            WHEN 'held'       THEN format('%s %s is on hold while payment %s is disputed.', v_amount_text, c.currency, c.payment_id)
            ELSE                   format('%s %s is no longer on hold: the dispute of payment %s ended.', v_amount_text, c.currency, c.payment_id)
        END,
        CASE c.kind WHEN 'earned' THEN c.amount ELSE 0 END,
        entry_pending_delta(c.kind, c.stage, c.amount),
        CASE c.kind WHEN 'reversed' THEN c.amount WHEN 'reinstated' THEN -c.amount ELSE 0 END,
        CASE c.kind WHEN 'held' THEN c.amount WHEN 'released' THEN -c.amount ELSE 0 END,
        CASE WHEN c.stage = 'approved' THEN v_payable ELSE 0 END,
        v_payable,
        0,
        0);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION publish_commission_entry() IS
    'Engine internals (deferred trigger on commissions, at commit): publishes a new ledger entry (publish_event) as commission.created, .reversed, .reinstated, .held or .released, moving the totals its kind and stage say. Approved entries are published per batch instead (publish_commission_approval).';

DROP TRIGGER IF EXISTS commissions_publish ON commissions;
CREATE CONSTRAINT TRIGGER commissions_publish
    AFTER INSERT ON commissions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.kind <> 'approved')
    EXECUTE FUNCTION publish_commission_entry();
COMMENT ON TRIGGER commissions_publish ON commissions IS
    'Publishes each ledger entry at COMMIT, so the locks that order events are held for the commit only (see the head of sql/03_commission_engine.sql). Approved entries are published per approval batch (commission_approvals_publish), not one by one.';

DROP FUNCTION IF EXISTS commission_event_position_lock_key();
