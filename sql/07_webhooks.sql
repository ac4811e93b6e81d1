-- A provider's webhook event, applied in one call and one transaction.
--
-- The service checks the signature and reads the provider's JSON; what the
-- event asks (verify, refund, or nothing) is decided here, next to the data.
-- One round trip instead of one per step matters: every statement a client
-- sends costs PostgreSQL a wake-up, a snapshot and a protocol exchange, and
-- the webhook path spent more CPU on those than on the engine itself.
--
-- The event row is inserted first: a redelivery racing with the first
-- delivery waits on its primary key until that commits, then finds the row
-- and changes nothing. The engine (verify_payment, refund_payment) runs last:
-- from its advisory lock to COMMIT every verification takes turns, so
-- nothing else may sit in between.

CREATE OR REPLACE FUNCTION apply_webhook_event(
    p_provider      text,
    p_event_id      text,
    p_event_type    text,
    p_payload       jsonb,
    p_action        text,
    p_reference     text,
    p_amount_minor  bigint,
    p_currency      text,
    p_partner_id    bigint)
RETURNS TABLE (outcome text, payment_id bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    v_outcome     text;
    v_payment_id  bigint;
    v_minor_units smallint;
    v_amount      numeric;
    v_payment     record;
BEGIN
    INSERT INTO webhook_events (provider, event_id, event_type, outcome, payload)
    VALUES (p_provider, p_event_id, p_event_type, 'processing', p_payload)
    ON CONFLICT (provider, event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::bigint;
        RETURN;
    END IF;

    IF p_action = 'verify' THEN
        IF p_currency ~ '^[A-Za-z]{3}$' THEN
            SELECT c.minor_units INTO v_minor_units FROM currencies c WHERE c.code = upper(p_currency)::char(3);
        END IF;
        IF v_minor_units IS NULL THEN
            v_outcome := 'unsupported_currency';
        ELSE
            v_amount := money_from_minor_units(p_amount_minor, v_minor_units);
            IF v_amount <= 0 THEN
                v_outcome := 'invalid_amount';
            ELSIF p_partner_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM partners WHERE id = p_partner_id) THEN
                v_outcome := 'unknown_partner';
            ELSE
                SELECT p.id, p.status INTO v_payment
                  FROM payments p
                 WHERE p.provider = p_provider AND p.provider_reference = p_reference
                   FOR UPDATE;
                IF NOT FOUND THEN
                    -- Recorded pending, then verified: a provider's payment passes
                    -- through the same state machine as a manual one.
                    INSERT INTO payments (amount, currency, partner_id, provider, provider_reference)
                    VALUES (v_amount, upper(p_currency), p_partner_id, p_provider, p_reference)
                    RETURNING id INTO v_payment_id;
                    v_outcome := 'verified';
                ELSE
                    v_payment_id := v_payment.id;
                    v_outcome := CASE v_payment.status
                                     WHEN 'pending'  THEN 'verified'
                                     WHEN 'verified' THEN 'already_verified'
                                     ELSE 'illegal_transition'
                                 END;
                END IF;
            END IF;
        END IF;
    ELSIF p_action = 'refund' THEN
        SELECT p.id, p.status, p.amount, c.minor_units INTO v_payment
          FROM payments p JOIN currencies c ON c.code = p.currency
         WHERE p.provider = p_provider AND p.provider_reference = p_reference
           FOR UPDATE OF p;
        IF NOT FOUND THEN
            v_outcome := 'unknown_payment';
        ELSE
            v_payment_id := v_payment.id;
            v_outcome := CASE
                WHEN p_amount_minor IS NOT NULL
                     AND money_from_minor_units(p_amount_minor, v_payment.minor_units) < v_payment.amount
                    THEN 'partial_refund_ignored'
                WHEN v_payment.status = 'refunded' THEN 'already_refunded'
                WHEN v_payment.status <> 'verified' THEN 'illegal_transition'
                ELSE 'refunded'
            END;
        END IF;
    ELSE
        -- The service already knows the outcome (an unsupported event type, a
        -- partial refund, a partner id that is not a number): record it.
        v_outcome := p_action;
    END IF;

    UPDATE webhook_events w
       SET outcome = v_outcome, payment_id = v_payment_id
     WHERE w.provider = p_provider AND w.event_id = p_event_id;

    IF v_outcome = 'verified' THEN
        PERFORM verify_payment(v_payment_id);
    ELSIF v_outcome = 'refunded' THEN
        PERFORM refund_payment(v_payment_id);
    END IF;
    RETURN QUERY SELECT v_outcome, v_payment_id;
END
$$;
COMMENT ON FUNCTION apply_webhook_event(text, text, text, jsonb, text, text, bigint, text, bigint) IS
    'Applies one signature-checked provider event: records it in webhook_events (a redelivery returns duplicate and changes nothing), then for p_action verify creates or finds the payment by provider reference and verifies it, for refund refunds it in full, and otherwise records p_action as the outcome. Returns the outcome and the payment. Called by the service once per webhook.';
