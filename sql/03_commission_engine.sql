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

CREATE OR REPLACE FUNCTION partner_totals_json(p_partner_id bigint, p_currency char(3))
RETURNS jsonb
LANGUAGE sql STABLE STRICT
AS $$
    SELECT jsonb_build_object(b.currency, jsonb_build_object(
        'earned',   money_text(b.earned, b.currency),
        'pending',  money_text(b.pending, b.currency),
        'paid',     money_text(b.paid, b.currency),
        'reversed', money_text(b.reversed, b.currency),
        'held',     money_text(b.held, b.currency)))
    FROM partner_balances b
    WHERE b.partner_id = p_partner_id AND b.currency = p_currency
$$;
COMMENT ON FUNCTION partner_totals_json(bigint, char) IS
    'A partner''s totals in one currency as wire JSON: {"NGN": {"earned": "2.00", "pending": "2.00", "paid": "0.00", "reversed": "0.00", "held": "0.00"}}.';

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

CREATE OR REPLACE FUNCTION append_commission_entry(
    p_payment payments,
    p_kind    commission_kind,
    p_amount  numeric,
    p_rate    numeric,
    p_reason  text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    -- Lets the ledger's insert guard (04_ledger_guards.sql) tell the engine from a hand edit.
    PERFORM set_config('commissions.engine', 'on', true);
    INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units)
    VALUES (p_payment.id, p_payment.partner_id, p_kind, p_amount, p_payment.currency, p_rate,
            p_payment.amount, p_reason, p_payment.minor_units);
    PERFORM set_config('commissions.engine', '', true);
END
$$;
COMMENT ON FUNCTION append_commission_entry(payments, commission_kind, numeric, numeric, text) IS
    'Engine internals: appends one ledger entry for a payment. Its balance, event and NOTIFY follow at commit (publish_commission_entry).';

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
     WHERE payment_id = p_payment_id AND kind <> 'earned';
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

    -- Entries that lower a total come first, so that no intermediate total
    -- (each one is sent to the partner) holds more than is left.
    IF v_held_goal < v_held THEN
        PERFORM append_commission_entry(v_payment, 'released', v_held - v_held_goal, v_earned.rate, 'dispute');
    END IF;
    IF v_reversed_goal > v_reversed THEN
        PERFORM append_commission_entry(v_payment, 'reversed', v_reversed_goal - v_reversed, v_earned.rate, p_reason);
    ELSIF v_reversed_goal < v_reversed THEN
        PERFORM append_commission_entry(v_payment, 'reinstated', v_reversed - v_reversed_goal, v_earned.rate, p_reason);
    END IF;
    IF v_held_goal > v_held THEN
        PERFORM append_commission_entry(v_payment, 'held', v_held_goal - v_held, v_earned.rate, 'dispute');
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
                PERFORM append_commission_entry(NEW, 'earned', v_amount, v_rate, 'verified');
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
    ELSIF TG_OP = 'UPDATE' AND NEW.refunded_amount <> OLD.refunded_amount THEN
        PERFORM settle_commission(NEW.id, 'refund');
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION commission_engine() IS
    'The commission rules (trigger function on payments): a payment that becomes verified earns round(amount * rate) for its partner and takes any provider events parked for it; a refund settles the commission in proportion (settle_commission).';

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

-- This runs once per ledger entry inside the commit, from its first lock to
-- the end of COMMIT every publishing transaction takes turns (as they do on
-- PostgreSQL's own notify lock): keep it short. Amounts are formatted with
-- round(x, units)::text, exactly what money_text() returns without its
-- currency lookup; the totals come from the balance upsert's RETURNING.
CREATE OR REPLACE FUNCTION publish_commission_entry()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    c             commissions := NEW;
    u             smallint := NEW.minor_units;
    -- Totals mix payments recorded with different minor units if an operator
    -- changed the currency's; they are written as money_text() writes them
    -- (the currency's units now), so the socket and the REST API agree.
    t             smallint := (SELECT minor_units FROM currencies WHERE code = NEW.currency);
    v_position    bigint;
    v_seq         bigint;
    v_balance     partner_balances;
    v_amount_text text := round(NEW.amount, NEW.minor_units)::text;
    v_type        text;
    v_event       text;
BEGIN
    -- Lets the guards in 04_ledger_guards.sql tell the engine from a hand edit.
    PERFORM set_config('commissions.engine', 'on', true);

    -- Lock order: the global position first, then the partner. Held to the
    -- end of this COMMIT: positions and seqs are in commit order, gapless.
    UPDATE event_log_head SET position = position + 1 RETURNING position INTO v_position;
    INSERT INTO partner_streams AS s (partner_id, last_seq) VALUES (c.partner_id, 1)
    ON CONFLICT (partner_id) DO UPDATE SET last_seq = s.last_seq + 1
    RETURNING s.last_seq INTO v_seq;

    INSERT INTO partner_balances AS b (partner_id, currency, earned, pending, reversed, held)
    VALUES (c.partner_id, c.currency,
            CASE c.kind WHEN 'earned' THEN c.amount ELSE 0 END,
            CASE c.kind WHEN 'earned' THEN c.amount WHEN 'reinstated' THEN c.amount
                        WHEN 'reversed' THEN -c.amount ELSE 0 END,
            CASE c.kind WHEN 'reversed' THEN c.amount WHEN 'reinstated' THEN -c.amount ELSE 0 END,
            CASE c.kind WHEN 'held' THEN c.amount WHEN 'released' THEN -c.amount ELSE 0 END)
    ON CONFLICT (partner_id, currency) DO UPDATE
       SET earned     = b.earned + EXCLUDED.earned,
           pending    = b.pending + EXCLUDED.pending,
           reversed   = b.reversed + EXCLUDED.reversed,
           held       = b.held + EXCLUDED.held,
           updated_at = now()
    RETURNING b.* INTO v_balance;

    v_type := CASE c.kind
        WHEN 'earned'     THEN 'commission.created'
        WHEN 'reversed'   THEN 'commission.reversed'
        WHEN 'reinstated' THEN 'commission.reinstated'
        WHEN 'held'       THEN 'commission.held'
        ELSE                   'commission.released'
    END;

    INSERT INTO commission_events (position, partner_id, seq, type, data, occurred_at)
    VALUES (v_position, c.partner_id, v_seq, v_type,
            jsonb_build_object(
                'commission_id',  c.id,
                'payment_id',     c.payment_id,
                'kind',           c.kind,
                'reason',         c.reason,
                'amount',         v_amount_text,
                'currency',       c.currency,
                'rate',           trim_scale(c.rate)::text,
                'payment_amount', round(c.payment_amount, u)::text,
                'totals',         jsonb_build_object(v_balance.currency, jsonb_build_object(
                    'earned',   round(v_balance.earned, t)::text,
                    'pending',  round(v_balance.pending, t)::text,
                    'paid',     round(v_balance.paid, t)::text,
                    'reversed', round(v_balance.reversed, t)::text,
                    'held',     round(v_balance.held, t)::text))),
            now())
    RETURNING commission_event_json(commission_events)::text INTO v_event;

    INSERT INTO notifications (partner_id, event_position, title, body)
    VALUES (c.partner_id, v_position,
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
            END);

    PERFORM pg_notify(partner_channel(c.partner_id), v_event);
    PERFORM pg_notify('commissions_admin', v_event);
    PERFORM set_config('commissions.engine', '', true);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION publish_commission_entry() IS
    'Engine internals (deferred trigger on commissions, at commit): gives a new ledger entry its global position and partner seq, updates the partner''s balance, writes the event and the notification, and NOTIFYs the partner''s and the admin channel.';

DROP TRIGGER IF EXISTS commissions_publish ON commissions;
CREATE CONSTRAINT TRIGGER commissions_publish
    AFTER INSERT ON commissions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION publish_commission_entry();
COMMENT ON TRIGGER commissions_publish ON commissions IS
    'Publishes each ledger entry at COMMIT, so the locks that order events are held for the commit only (see the head of sql/03_commission_engine.sql).';

DROP FUNCTION IF EXISTS commission_event_position_lock_key();
