-- The payment state machine. Every change to a payment, whoever makes it (the
-- API, a webhook, a DBA in psql), passes through payments_check_transition,
-- so an illegal change is impossible rather than merely unlikely.
--
--   pending -> verified -> refunded
--   pending -> failed
--
-- Refunds are cumulative: refunded_amount grows from 0 to the amount while
-- the payment stays verified, and reaching the amount makes it refunded.
-- Setting status = 'refunded' refunds the rest. The commission engine
-- (03_commission_engine.sql) reverses the commission in proportion.
--
-- Minor units are fixed when a payment is recorded (payments.minor_units):
-- a later change to currencies.minor_units changes no existing payment.

-- PL/pgSQL, not SQL: this STRICT SQL body was never inlined, so every status
-- change parsed and planned it again; PL/pgSQL keeps the compiled expression.
CREATE OR REPLACE FUNCTION payment_transition_allowed(p_from payment_status, p_to payment_status)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT
AS $$
BEGIN
    RETURN (p_from, p_to) IN (
        ('pending'::payment_status, 'verified'::payment_status),
        ('pending', 'failed'),
        ('verified', 'refunded')
    );
END
$$;
COMMENT ON FUNCTION payment_transition_allowed(payment_status, payment_status) IS
    'The legal status changes: pending -> verified, pending -> failed, verified -> refunded.';

CREATE OR REPLACE FUNCTION payment_minor_units(p_amount numeric, p_currency char(3))
RETURNS smallint
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_minor_units smallint;
BEGIN
    SELECT minor_units INTO v_minor_units FROM currencies WHERE code = p_currency;
    IF NOT FOUND THEN
        PERFORM round_money(p_amount, p_currency);  -- raises the unknown-currency error
    END IF;
    IF p_amount <> round(p_amount, v_minor_units) THEN
        RAISE EXCEPTION 'payment amount % has more decimals than % allows (%)',
            trim_scale(p_amount), p_currency, v_minor_units
            USING ERRCODE = 'CM002';
    END IF;
    RETURN v_minor_units;
END
$$;
COMMENT ON FUNCTION payment_minor_units(numeric, char) IS
    'The minor units a payment of this amount and currency is recorded with; raises if the currency is unknown or the amount has more decimals than it allows.';

CREATE OR REPLACE FUNCTION payments_check_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- The currency's minor units as of now, kept with the payment for good.
        NEW.minor_units := payment_minor_units(NEW.amount, NEW.currency);
        IF NEW.status NOT IN ('pending', 'verified', 'failed') THEN
            RAISE EXCEPTION 'a payment cannot be created as %: record it as pending or verified, then refund it',
                NEW.status USING ERRCODE = 'CM001';
        END IF;
        IF NEW.refunded_amount IS DISTINCT FROM 0 THEN
            RAISE EXCEPTION 'a payment is created with nothing refunded: record it, verify it, then refund it'
                USING ERRCODE = 'CM001';
        END IF;
        IF NEW.status = 'verified' THEN
            NEW.verified_at := now();
        END IF;
        RETURN NEW;
    END IF;

    IF NEW.minor_units IS DISTINCT FROM OLD.minor_units THEN
        RAISE EXCEPTION 'payment %: minor_units is fixed when the payment is recorded (%)', OLD.id, OLD.minor_units
            USING ERRCODE = 'CM001';
    END IF;
    IF OLD.provider <> 'manual'
       AND (NEW.provider, NEW.provider_reference) IS DISTINCT FROM (OLD.provider, OLD.provider_reference) THEN
        -- Provider events find the payment (and park for it) by this pair.
        RAISE EXCEPTION 'payment % came from %: its provider and reference identify it to that provider and cannot change',
            OLD.id, OLD.provider USING ERRCODE = 'CM001';
    END IF;
    IF OLD.status = 'pending' AND (NEW.amount, NEW.currency) IS DISTINCT FROM (OLD.amount, OLD.currency) THEN
        -- A pending payment may still be corrected; its minor units follow its currency.
        NEW.minor_units := payment_minor_units(NEW.amount, NEW.currency);
    END IF;
    IF OLD.status <> 'pending'
       AND (NEW.amount, NEW.currency, NEW.partner_id, NEW.provider, NEW.provider_reference)
           IS DISTINCT FROM (OLD.amount, OLD.currency, OLD.partner_id, OLD.provider, OLD.provider_reference) THEN
        RAISE EXCEPTION 'payment % is %: its amount, currency, partner, provider and reference can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'CM001';
    END IF;

    -- Refunding everything by status: the rest of the amount is refunded.
    IF NEW.status = 'refunded' AND OLD.status = 'verified' AND NEW.refunded_amount = OLD.refunded_amount THEN
        NEW.refunded_amount := NEW.amount;
    END IF;
    IF NEW.refunded_amount IS DISTINCT FROM OLD.refunded_amount THEN
        IF OLD.status <> 'verified' THEN
            RAISE EXCEPTION 'payment % is %: only a verified payment can be refunded', OLD.id, OLD.status
                USING ERRCODE = 'CM001';
        END IF;
        IF NEW.refunded_amount < OLD.refunded_amount THEN
            RAISE EXCEPTION 'payment %: refunded_amount only grows (it is %, not %)',
                OLD.id, round(OLD.refunded_amount, OLD.minor_units), trim_scale(NEW.refunded_amount)
                USING ERRCODE = 'CM001';
        END IF;
        IF NEW.refunded_amount > NEW.amount THEN
            RAISE EXCEPTION 'payment %: a refund of % % would pass the amount paid (% refunded of %)',
                OLD.id, trim_scale(NEW.refunded_amount - OLD.refunded_amount), OLD.currency,
                round(OLD.refunded_amount, OLD.minor_units), round(OLD.amount, OLD.minor_units)
                USING ERRCODE = 'CM005';
        END IF;
        IF NEW.refunded_amount <> round(NEW.refunded_amount, NEW.minor_units) THEN
            RAISE EXCEPTION 'refund amount % has more decimals than % allows (%)',
                trim_scale(NEW.refunded_amount), NEW.currency, NEW.minor_units
                USING ERRCODE = 'CM002';
        END IF;
        IF NEW.refunded_amount = NEW.amount THEN
            NEW.status := 'refunded';
        ELSIF NEW.status = 'refunded' THEN
            RAISE EXCEPTION 'payment %: refunded means refunded in full (% of % refunded)',
                OLD.id, round(NEW.refunded_amount, OLD.minor_units), round(OLD.amount, OLD.minor_units)
                USING ERRCODE = 'CM001';
        END IF;
    END IF;

    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT payment_transition_allowed(OLD.status, NEW.status) THEN
            RAISE EXCEPTION 'illegal status change for payment %: % -> % (allowed: pending -> verified, pending -> failed, verified -> refunded)',
                OLD.id, OLD.status, NEW.status USING ERRCODE = 'CM001';
        END IF;
        IF NEW.status = 'verified' THEN
            NEW.verified_at := now();
        ELSIF NEW.status = 'refunded' THEN
            NEW.refunded_at := now();
        END IF;
    END IF;
    IF (NEW.status, NEW.refunded_amount) IS DISTINCT FROM (OLD.status, OLD.refunded_amount) THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments_check_transition() IS
    'Trigger function: fixes a payment''s minor units when it is recorded, rejects amounts with too many decimals, illegal status changes, refunds that shrink or pass the amount, and changes to a settled payment''s amount, currency, partner or reference.';

CREATE OR REPLACE TRIGGER payments_check_transition
    BEFORE INSERT OR UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_check_transition();
COMMENT ON TRIGGER payments_check_transition ON payments IS
    'Enforces the payment state machine, cumulative refunds and the payment''s decimals before any row is written.';
