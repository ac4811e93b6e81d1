-- The payment state machine. Every status change, whoever makes it (the API,
-- a webhook, a DBA in psql), passes through payments_check_transition, so an
-- illegal change is impossible rather than merely unlikely.
--
--   pending -> verified -> refunded
--   pending -> failed

CREATE OR REPLACE FUNCTION payment_transition_allowed(p_from payment_status, p_to payment_status)
RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT
AS $$
    SELECT (p_from, p_to) IN (
        ('pending'::payment_status, 'verified'::payment_status),
        ('pending', 'failed'),
        ('verified', 'refunded')
    )
$$;
COMMENT ON FUNCTION payment_transition_allowed(payment_status, payment_status) IS
    'The legal status changes: pending -> verified, pending -> failed, verified -> refunded.';

CREATE OR REPLACE FUNCTION payments_check_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.amount <> round_money(NEW.amount, NEW.currency) THEN
        RAISE EXCEPTION 'payment amount % has more decimals than % allows (%)',
            trim_scale(NEW.amount), NEW.currency, (SELECT minor_units FROM currencies WHERE code = NEW.currency)
            USING ERRCODE = 'CM002';
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
