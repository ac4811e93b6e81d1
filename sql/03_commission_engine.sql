-- The commission engine. It runs inside the transaction that verifies or
-- refunds a payment, so the commission, the balance, the event and the NOTIFY
-- all commit together or not at all. PostgreSQL delivers a NOTIFY only on
-- COMMIT, so a dashboard never sees a commission that was rolled back.
--
-- Rules:
--   * verified: commission = round_money(amount * partner's rate, currency).
--     No partner, or a commission that rounds to zero: nothing is written.
--   * refunded (from verified): the earned commission is reversed in full.
--   * one earned and one reversed entry per payment at most
--     (constraint commissions_one_per_payment_and_kind).
--
-- Ordering (what makes "never lost, never twice" possible):
--   * the partner row is locked first and last_seq bumped in that update, so
--     a partner's seq is gapless and in commit order;
--   * the global position is drawn under a transaction-scoped advisory lock
--     that is held through COMMIT, so positions are in commit order too. The
--     lock is taken last, to keep the serialised stretch short: a NOTIFYing
--     commit already serialises on PostgreSQL's notify queue lock.

CREATE OR REPLACE FUNCTION commission_event_position_lock_key()
RETURNS bigint
LANGUAGE sql IMMUTABLE
AS $$ SELECT 7164946332151808101::bigint $$;
COMMENT ON FUNCTION commission_event_position_lock_key() IS
    'The advisory lock key serialising commission_events.position allocation (held to the end of the transaction).';

CREATE OR REPLACE FUNCTION partner_channel(p_partner_id bigint)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
-- The explicit ::text matters: text || bigint is anytextcat(), a STABLE SQL
-- function, which would stop this IMMUTABLE one being inlined, and a SQL
-- function that is not inlined is parsed and planned again on every call.
AS $$ SELECT 'commissions_partner_' || p_partner_id::text $$;
COMMENT ON FUNCTION partner_channel(bigint) IS
    'The NOTIFY channel carrying one partner''s events. The admin channel, commissions_admin, carries every event.';

CREATE OR REPLACE FUNCTION partner_totals_json(p_partner_id bigint, p_currency char(3))
RETURNS jsonb
LANGUAGE sql STABLE STRICT
AS $$
    SELECT jsonb_build_object(b.currency, jsonb_build_object(
        'earned',   money_text(b.earned, b.currency),
        'pending',  money_text(b.pending, b.currency),
        'paid',     money_text(b.paid, b.currency),
        'reversed', money_text(b.reversed, b.currency)))
    FROM partner_balances b
    WHERE b.partner_id = p_partner_id AND b.currency = p_currency
$$;
COMMENT ON FUNCTION partner_totals_json(bigint, char) IS
    'A partner''s totals in one currency as wire JSON: {"NGN": {"earned": "2.00", "pending": "2.00", "paid": "0.00", "reversed": "0.00"}}.';

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

-- This runs once per verified payment, inside the commit that NOTIFYs, so its
-- cost caps the system's rate. The currency's minor units are read once per
-- event and amounts formatted with round(x, units)::text, which is exactly
-- what money_text() returns (it would look the currency up again each time);
-- the totals come from the balance upsert's RETURNING instead of a re-read.

DROP FUNCTION IF EXISTS record_commission(payments, commission_kind, numeric, numeric);

CREATE OR REPLACE FUNCTION record_commission(
    p_payment payments,
    p_kind commission_kind,
    p_amount numeric,
    p_rate numeric,
    p_seq bigint,
    p_minor_units smallint)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_commission_id bigint;
    v_position      bigint;
    v_amount_text   text := round(p_amount, p_minor_units)::text;
    v_balance       partner_balances;
    v_data          jsonb;
    v_event         text;
BEGIN
    INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount)
    VALUES (p_payment.id, p_payment.partner_id, p_kind, p_amount, p_payment.currency, p_rate, p_payment.amount)
    RETURNING id INTO v_commission_id;

    -- The totals in the event come from this upsert's RETURNING: the row as
    -- this transaction left it, which is what partner_totals_json() would read.
    INSERT INTO partner_balances AS b (partner_id, currency, earned, pending, reversed)
    VALUES (p_payment.partner_id, p_payment.currency,
            CASE p_kind WHEN 'earned' THEN p_amount ELSE 0 END,
            CASE p_kind WHEN 'earned' THEN p_amount ELSE -p_amount END,
            CASE p_kind WHEN 'reversed' THEN p_amount ELSE 0 END)
    ON CONFLICT (partner_id, currency) DO UPDATE
       SET earned     = b.earned + EXCLUDED.earned,
           pending    = b.pending + EXCLUDED.pending,
           reversed   = b.reversed + EXCLUDED.reversed,
           updated_at = now()
    RETURNING b.* INTO v_balance;

    v_data := jsonb_build_object(
        'commission_id',  v_commission_id,
        'payment_id',     p_payment.id,
        'kind',           p_kind,
        'amount',         v_amount_text,
        'currency',       p_payment.currency,
        'rate',           trim_scale(p_rate)::text,
        'payment_amount', round(p_payment.amount, p_minor_units)::text,
        'totals',         jsonb_build_object(v_balance.currency, jsonb_build_object(
            'earned',   round(v_balance.earned, p_minor_units)::text,
            'pending',  round(v_balance.pending, p_minor_units)::text,
            'paid',     round(v_balance.paid, p_minor_units)::text,
            'reversed', round(v_balance.reversed, p_minor_units)::text)));

    -- From here to COMMIT every verification in the system takes turns.
    PERFORM pg_advisory_xact_lock(commission_event_position_lock_key());
    v_position := nextval('commission_events_position_seq');

    INSERT INTO commission_events (position, partner_id, seq, type, data, occurred_at)
    VALUES (v_position, p_payment.partner_id, p_seq,
            CASE p_kind WHEN 'earned' THEN 'commission.created' ELSE 'commission.reversed' END,
            v_data, now())
    RETURNING commission_event_json(commission_events)::text INTO v_event;

    INSERT INTO notifications (partner_id, event_position, title, body)
    VALUES (p_payment.partner_id, v_position,
            CASE p_kind WHEN 'earned' THEN 'Commission earned' ELSE 'Commission reversed' END,
            CASE p_kind
                WHEN 'earned' THEN format('You earned %s %s on payment %s.', v_amount_text, p_payment.currency, p_payment.id)
                ELSE format('%s %s was reversed: payment %s was refunded.', v_amount_text, p_payment.currency, p_payment.id)
            END);

    PERFORM pg_notify(partner_channel(p_payment.partner_id), v_event);
    PERFORM pg_notify('commissions_admin', v_event);
    RETURN v_commission_id;
END
$$;
COMMENT ON FUNCTION record_commission(payments, commission_kind, numeric, numeric, bigint, smallint) IS
    'Engine internals: with the partner row already locked and its seq taken (p_seq), appends one ledger entry and, in the same transaction, updates the balance, writes the event and the notification, and NOTIFYs the partner''s and the admin channel. Called only by commission_engine().';

CREATE OR REPLACE FUNCTION commission_engine()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_minor_units smallint;
    v_rate        numeric;
    v_amount      numeric;
    v_seq         bigint;
    v_earned      commissions;
BEGIN
    IF NEW.partner_id IS NULL THEN
        RETURN NULL;
    END IF;

    IF NEW.status = 'verified' AND (TG_OP = 'INSERT' OR OLD.status <> 'verified') THEN
        SELECT minor_units INTO v_minor_units FROM currencies WHERE code = NEW.currency;
        IF NOT FOUND THEN
            -- Unreachable (payments_check_transition refused it), kept for round_money's error.
            PERFORM round_money(NEW.amount, NEW.currency);
        END IF;
        -- Lock the partner before reading the rate: a concurrent rate change
        -- then applies either wholly before or wholly after this payment.
        SELECT commission_rate INTO v_rate FROM partners WHERE id = NEW.partner_id FOR NO KEY UPDATE;
        v_amount := round(NEW.amount * v_rate, v_minor_units);
        IF v_amount > 0 THEN
            -- Lets the guards in 04_ledger_guards.sql tell the engine from a hand edit.
            PERFORM set_config('commissions.engine', 'on', true);
            UPDATE partners
               SET last_seq = last_seq + 1, updated_at = now()
             WHERE id = NEW.partner_id
            RETURNING last_seq INTO v_seq;
            PERFORM record_commission(NEW, 'earned', v_amount, v_rate, v_seq, v_minor_units);
            PERFORM set_config('commissions.engine', '', true);
        END IF;
    ELSIF NEW.status = 'refunded' AND TG_OP = 'UPDATE' AND OLD.status = 'verified' THEN
        SELECT * INTO v_earned FROM commissions WHERE payment_id = NEW.id AND kind = 'earned';
        IF FOUND THEN
            SELECT minor_units INTO v_minor_units FROM currencies WHERE code = NEW.currency;
            PERFORM set_config('commissions.engine', 'on', true);
            -- Locks the partner and takes its next seq in one visit.
            UPDATE partners SET last_seq = last_seq + 1, updated_at = now()
             WHERE id = NEW.partner_id
            RETURNING last_seq INTO v_seq;
            PERFORM record_commission(NEW, 'reversed', v_earned.amount, v_earned.rate, v_seq, v_minor_units);
            PERFORM set_config('commissions.engine', '', true);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION commission_engine() IS
    'The commission rules (trigger function on payments): a payment that becomes verified earns round_money(amount * rate, currency) for its partner; a verified payment that is refunded reverses that commission.';

CREATE OR REPLACE TRIGGER payments_commission_engine
    AFTER INSERT OR UPDATE OF status ON payments
    FOR EACH ROW
    WHEN (NEW.status IN ('verified', 'refunded'))
    EXECUTE FUNCTION commission_engine();
COMMENT ON TRIGGER payments_commission_engine ON payments IS
    'Runs the commission engine in the transaction that verifies or refunds a payment.';
