-- The payment state machine. Every status change, whoever makes it (the API,
-- a webhook, a DBA in psql), passes through payments_check_transition, so an
-- illegal change is impossible rather than merely unlikely.
--
--   pending -> verified -> refunded
--   pending -> failed

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

CREATE OR REPLACE FUNCTION payments_check_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_minor_units smallint;
BEGIN
    -- round_money()'s check and error, with the currency read once.
    IF NEW.amount IS NOT NULL AND NEW.currency IS NOT NULL THEN
        SELECT minor_units INTO v_minor_units FROM currencies WHERE code = NEW.currency;
        IF NOT FOUND THEN
            PERFORM round_money(NEW.amount, NEW.currency);  -- raises the unknown-currency error
        END IF;
        IF NEW.amount <> round(NEW.amount, v_minor_units) THEN
            RAISE EXCEPTION 'payment amount % has more decimals than % allows (%)',
                trim_scale(NEW.amount), NEW.currency, v_minor_units
                USING ERRCODE = 'CM002';
        END IF;
    END IF;

    IF TG_OP = 'INSERT' THEN
        IF NEW.status NOT IN ('pending', 'verified', 'failed') THEN
            RAISE EXCEPTION 'a payment cannot be created as %: record it as pending or verified, then refund it',
                NEW.status USING ERRCODE = 'CM001';
        END IF;
        IF NEW.status = 'verified' THEN
            NEW.verified_at := now();
        END IF;
        RETURN NEW;
    END IF;

    IF OLD.status <> 'pending'
       AND (NEW.amount, NEW.currency, NEW.partner_id) IS DISTINCT FROM (OLD.amount, OLD.currency, OLD.partner_id) THEN
        RAISE EXCEPTION 'payment % is %: its amount, currency and partner can no longer change', OLD.id, OLD.status
            USING ERRCODE = 'CM001';
    END IF;

    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT payment_transition_allowed(OLD.status, NEW.status) THEN
            RAISE EXCEPTION 'illegal status change for payment %: % -> % (allowed: pending -> verified, pending -> failed, verified -> refunded)',
                OLD.id, OLD.status, NEW.status USING ERRCODE = 'CM001';
        END IF;
        NEW.updated_at := now();
        IF NEW.status = 'verified' THEN
            NEW.verified_at := now();
        ELSIF NEW.status = 'refunded' THEN
            NEW.refunded_at := now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION payments_check_transition() IS
    'Trigger function: rejects amounts with too many decimals for their currency, illegal status changes, and changes to a settled payment''s amount, currency or partner.';

CREATE OR REPLACE TRIGGER payments_check_transition
    BEFORE INSERT OR UPDATE ON payments
    FOR EACH ROW EXECUTE FUNCTION payments_check_transition();
COMMENT ON TRIGGER payments_check_transition ON payments IS
    'Enforces the payment state machine and the currency''s decimals before any row is written.';
