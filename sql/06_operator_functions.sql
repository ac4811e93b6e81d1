-- What an operator (or the API on their behalf) does to a payment, callable
-- from psql: SELECT verify_payment(42); They lock the payment, so concurrent
-- calls on one payment take turns and the second gets a clear error.
-- The wrappers are PL/pgSQL because a SQL function returning a row is parsed
-- and planned again on every call.

CREATE OR REPLACE FUNCTION lock_payment(p_payment_id bigint)
RETURNS payments
LANGUAGE plpgsql
AS $$
DECLARE
    v_payment payments;
BEGIN
    SELECT * INTO v_payment FROM payments WHERE id = p_payment_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'payment % does not exist', p_payment_id USING ERRCODE = 'CM004';
    END IF;
    RETURN v_payment;
END
$$;
COMMENT ON FUNCTION lock_payment(bigint) IS
    'The payment, locked until the end of the transaction; raises CM004 if there is no such payment.';

CREATE OR REPLACE FUNCTION change_payment_status(p_payment_id bigint, p_status payment_status)
RETURNS payments
LANGUAGE plpgsql
AS $$
DECLARE
    v_payment payments := lock_payment(p_payment_id);
BEGIN
    IF v_payment.status = p_status THEN
        RAISE EXCEPTION 'illegal status change for payment %: it is already %', p_payment_id, p_status
            USING ERRCODE = 'CM001';
    END IF;
    UPDATE payments SET status = p_status WHERE id = p_payment_id RETURNING * INTO v_payment;
    RETURN v_payment;
END
$$;
COMMENT ON FUNCTION change_payment_status(bigint, payment_status) IS
    'Moves a payment to a new status under a row lock; the triggers check the transition and run the engine.';

CREATE OR REPLACE FUNCTION verify_payment(p_payment_id bigint)
RETURNS payments
LANGUAGE plpgsql
AS $$ BEGIN RETURN change_payment_status(p_payment_id, 'verified'); END $$;
COMMENT ON FUNCTION verify_payment(bigint) IS 'Verifies a pending payment, earning its commission.';

DROP FUNCTION IF EXISTS refund_payment(bigint);
CREATE OR REPLACE FUNCTION refund_payment(p_payment_id bigint, p_amount numeric DEFAULT NULL)
RETURNS payments
LANGUAGE plpgsql
AS $$
DECLARE
    v_payment payments := lock_payment(p_payment_id);
BEGIN
    IF v_payment.status = 'refunded' THEN
        RAISE EXCEPTION 'illegal status change for payment %: it is already refunded', p_payment_id
            USING ERRCODE = 'CM001';
    END IF;
    IF v_payment.status <> 'verified' THEN
        RAISE EXCEPTION 'illegal status change for payment %: % -> refunded (allowed: pending -> verified, pending -> failed, verified -> refunded)',
            p_payment_id, v_payment.status USING ERRCODE = 'CM001';
    END IF;
    IF p_amount IS NOT NULL AND p_amount <= 0 THEN
        RAISE EXCEPTION 'a refund amount must be positive (got %)', trim_scale(p_amount) USING ERRCODE = 'CM002';
    END IF;
    -- payments_check_transition refuses too many decimals and more than was paid.
    UPDATE payments
       SET refunded_amount = CASE WHEN p_amount IS NULL THEN amount ELSE refunded_amount + p_amount END
     WHERE id = p_payment_id
    RETURNING * INTO v_payment;
    RETURN v_payment;
END
$$;
COMMENT ON FUNCTION refund_payment(bigint, numeric) IS
    'Refunds a verified payment: p_amount more (in major units), or by default all that is not refunded yet. Refunds add up; reaching the amount makes the payment refunded. The engine reverses the commission in proportion.';

CREATE OR REPLACE FUNCTION fail_payment(p_payment_id bigint)
RETURNS payments
LANGUAGE plpgsql
AS $$ BEGIN RETURN change_payment_status(p_payment_id, 'failed'); END $$;
COMMENT ON FUNCTION fail_payment(bigint) IS 'Marks a pending payment as failed; it earns nothing.';
