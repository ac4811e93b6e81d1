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

-- Many verifications in one statement, so the engine runs once over them all
-- and the transaction commits (and notifies each partner) once: what the
-- service does with admin verifications that arrive together. A payment
-- that is not pending, or not there, is skipped rather than raised, so one
-- of them does not cost the others their verification; the caller sees
-- verified = false and can call verify_payment for it to get its error.
CREATE OR REPLACE FUNCTION verify_payments(p_payment_ids bigint[])
RETURNS TABLE (ordinal integer, payment_id bigint, verified boolean, commission_id bigint)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_verified bigint[];
BEGIN
    -- The pending rows locked in id order, so that two of these calls never
    -- wait on each other in a circle. Only those: a payment that is not
    -- pending is skipped, so waiting for its lock (a refund's, a payout's)
    -- would hold up the batch, and locking it could close a circle with a
    -- webhook batch that locks by reference. A row waited for is checked
    -- again once free, and skipped if it is no longer pending.
    -- Row by row through the primary key, and the UPDATE planned for each
    -- call (EXECUTE): PL/pgSQL may keep a plan for the session's life, and
    -- one made while payments was small reads the whole table once it has
    -- grown (tests/api/engine.rs, no_engine_path_reads_a_grown_table_whole...).
    PERFORM 1
       FROM (SELECT DISTINCT u.id FROM unnest(p_payment_ids) AS u (id) ORDER BY u.id) i
      CROSS JOIN LATERAL (SELECT 1 FROM payments p WHERE p.id = i.id AND p.status = 'pending' FOR UPDATE) l;
    EXECUTE 'WITH done AS (
                 UPDATE payments p SET status = ''verified''
                  WHERE p.id = ANY ($1) AND p.status = ''pending''
                 RETURNING p.id
             )
             SELECT coalesce(array_agg(done.id), ''{}'') FROM done'
       INTO v_verified
      USING p_payment_ids;
    -- A payment asked for twice was verified by the first asking only.
    RETURN QUERY
    SELECT r.n, r.id, r.done,
           CASE WHEN r.done THEN
               (SELECT max(c.id) FROM commissions c WHERE c.payment_id = r.id AND c.kind = 'earned')
           END
      FROM (SELECT u.n::integer AS n, u.id,
                   u.id = ANY (v_verified) AND u.n = min(u.n) OVER (PARTITION BY u.id) AS done
              FROM unnest(p_payment_ids) WITH ORDINALITY AS u(id, n)) r
     ORDER BY r.n;
END
$$;
COMMENT ON FUNCTION verify_payments(bigint[]) IS
    'Verifies every pending payment of the list in one statement (rows locked in id order); one row per list element: verified is false for a payment that was not pending, does not exist or was asked for earlier in the list; commission_id is the earned entry, if any.';

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

-- The rest of what the service writes. It logs in as commissions_service,
-- which may not write these tables itself (sql/99_privileges.sql), so each
-- write it is allowed is one of these functions, and nothing else.

CREATE OR REPLACE FUNCTION create_partner(p_name text, p_commission_rate numeric DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_commission_rate IS NULL THEN
        INSERT INTO partners (name) VALUES (p_name) RETURNING id INTO v_id;
    ELSE
        INSERT INTO partners (name, commission_rate) VALUES (p_name, p_commission_rate) RETURNING id INTO v_id;
    END IF;
    UPDATE partners SET recurring_months = (SELECT default_recurring_months FROM commission_program)
     WHERE id = v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION create_partner(text, numeric) IS
    'Adds a partner; without a rate it earns the program default (the column default of partners.commission_rate), and its recurring_months is the program''s default_recurring_months. Returns its id.';

CREATE OR REPLACE FUNCTION set_partner_recurring_months(p_partner_id bigint, p_months integer)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    UPDATE partners SET recurring_months = p_months WHERE id = p_partner_id RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION set_partner_recurring_months(bigint, integer) IS
    'How long an attributed customer''s later payments earn for the partner: months from the first attributed payment, NULL for lifetime, 0 for the first payment only. Applies to payments recorded afterwards. Returns the id, or NULL if there is no such partner.';

CREATE OR REPLACE FUNCTION update_partner(p_partner_id bigint, p_name text DEFAULT NULL, p_commission_rate numeric DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    UPDATE partners
       SET name = coalesce(p_name, name), commission_rate = coalesce(p_commission_rate, commission_rate)
     WHERE id = p_partner_id
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION update_partner(bigint, text, numeric) IS
    'Renames a partner or changes its rate (NULL keeps the current value); the rate applies to payments verified afterwards. Returns the id, or NULL if there is no such partner.';

CREATE OR REPLACE FUNCTION record_payment(
    p_amount numeric,
    p_currency char(3),
    p_partner_id bigint DEFAULT NULL,
    p_provider_reference text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_id bigint;
BEGIN
    -- Always pending and always manual: a provider's payments arrive through
    -- apply_webhook_event, and only verify_payment makes one earn.
    INSERT INTO payments (amount, currency, partner_id, provider, provider_reference)
    VALUES (p_amount, p_currency, p_partner_id, 'manual', p_provider_reference)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION record_payment(numeric, char(3), bigint, text) IS
    'Records a pending manual payment (an operator''s, or the API''s POST /api/payments); verify it with verify_payment(id). Returns its id.';

CREATE OR REPLACE FUNCTION mark_notification_read(p_notification_id bigint, p_partner_id bigint DEFAULT NULL)
RETURNS SETOF notifications
LANGUAGE plpgsql
AS $$
BEGIN
    -- p_partner_id scopes the call to one partner's notifications (NULL: any,
    -- for an admin). A notification already read keeps its first read_at.
    RETURN QUERY
    UPDATE notifications SET read_at = coalesce(read_at, now())
     WHERE id = p_notification_id AND (p_partner_id IS NULL OR partner_id = p_partner_id)
    RETURNING *;
END
$$;
COMMENT ON FUNCTION mark_notification_read(bigint, bigint) IS
    'Marks a notification read (scoped to one partner unless p_partner_id is NULL); returns it, or no row if there is no such notification of that partner.';
