-- Provider webhook events, applied in one call and one transaction.
--
-- The service checks the signature and reads the provider's JSON into the
-- engine's terms (an action with a reference and an amount); what the event
-- does is decided here, next to the data. One round trip instead of one per
-- step matters: every statement a client sends costs PostgreSQL a wake-up,
-- a snapshot and a protocol exchange.
--
-- Actions:
--   verify             a successful charge: record the payment if new, verify it
--   refund_cumulative  the total refunded so far (Stripe's amount_refunded):
--                      refunded_amount := greatest(refunded_amount, total)
--   refund             one refund of amount_minor (Paystack), counted once by
--                      its event id
--   dispute            a dispute object_id of amount_minor now in object_state
--                      (open, funds_withdrawn, won, lost); states only move
--                      forward, so a late, older event changes nothing
--   anything else      the outcome itself (ignored, invalid_partner): recorded
--
-- Nothing a provider sent is dropped. An event that cannot apply yet is
-- parked (outcome 'parked', with parked_reason) in the transaction that
-- answers 200:
--   unknown_payment, payment_not_verified  applied by the transaction that
--                      records or verifies the payment (commission_engine)
--   unknown_partner, unsupported_currency  applied by reapply_parked_events()
--                      once an operator has created the partner or currency
-- Events about one provider reference take turns (a transaction-scoped
-- advisory lock on the reference), so a refund racing its payment's first
-- event either sees the payment or is seen by it: never neither.
--
-- Lock order, everywhere: the reference's advisory lock, then the payment's
-- row, then parked webhook_events rows. The engine's trigger, which runs
-- with the payment's row already locked, applies parked events without the
-- advisory lock: every other transaction about that reference locks the
-- payment's row before it decides anything, so it waits for this one.

CREATE OR REPLACE FUNCTION provider_reference_lock(p_provider text, p_reference text)
RETURNS void
-- SQL, not PL/pgSQL: a batch takes one per reference, and a SQL function is
-- inlined into the statement that calls it.
LANGUAGE sql
AS $$ SELECT pg_advisory_xact_lock(hashtextextended(p_provider || ':' || p_reference, 7164946332)) $$;
COMMENT ON FUNCTION provider_reference_lock(text, text) IS
    'Serialises the events about one provider reference until the end of the transaction (only that payment''s events wait).';

CREATE OR REPLACE FUNCTION max_payment_amount()
RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT 1e16::numeric $$;
COMMENT ON FUNCTION max_payment_amount() IS
    'Payments are below 10^16 in major units (payments.amount is numeric(20, 4)); a provider amount at or above it is invalid_amount.';

CREATE OR REPLACE FUNCTION record_rejected_webhook_event(
    p_provider   text,
    p_event_id   text,
    p_event_type text,
    p_payload    jsonb,
    p_reason     text)
RETURNS TABLE (outcome text)
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO webhook_events (provider, event_id, event_type, outcome, payload, action, rejected_reason)
    VALUES (p_provider, p_event_id, p_event_type, 'rejected', p_payload, 'rejected', p_reason)
    ON CONFLICT (provider, event_id) DO NOTHING;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'rejected' ELSE 'duplicate' END;
END
$$;
COMMENT ON FUNCTION record_rejected_webhook_event(text, text, text, jsonb, text) IS
    'Records an authenticated provider event that can never apply (outcome rejected, with its reason) and changes nothing else; a redelivery returns duplicate.';

-- Applies one stored event and records its outcome on its row. Called for a
-- new event by apply_webhook_event and for a parked one by the two functions
-- below; the caller holds the reference's advisory lock (or the payment's
-- row) and the event's row.
-- Recurring commissions. The rule, for a payment of a provider's customer:
--   * metadata names a partner: that partner earns; if the customer has no
--     partner yet, this is its first attributed payment and attributes it;
--   * else, an attributed customer's payment earns for its partner while it
--     is within the partner's recurring_months of the first attributed
--     payment (NULL: always; 0: never after the first). A customer attributed
--     by an event without a payment (p_reference NULL) makes its next
--     payment the first;
--   * else nobody earns.
-- Each payment stays its own commission: refunding one invoice reverses that
-- invoice's commission only.
CREATE OR REPLACE FUNCTION attribute_payment(
    p_provider    text,
    p_customer_id text,
    p_partner_id  bigint,
    p_paid_at     timestamptz,
    p_reference   text)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_customer customers;
    v_months   integer;
BEGIN
    IF p_customer_id IS NULL THEN
        RETURN p_partner_id;
    END IF;
    -- Locked last (after the payment's reference and row), so two payments
    -- of one customer take turns over its first payment.
    SELECT * INTO v_customer FROM customers c
     WHERE c.provider = p_provider AND c.customer_id = p_customer_id
       FOR UPDATE;
    IF p_partner_id IS NOT NULL THEN
        IF v_customer.partner_id IS NOT NULL AND v_customer.first_payment_reference IS NULL
           AND p_reference IS NOT NULL THEN
            UPDATE customers c SET first_payment_reference = p_reference
             WHERE c.provider = p_provider AND c.customer_id = p_customer_id;
        ELSIF v_customer.partner_id IS NULL THEN
            INSERT INTO customers (provider, customer_id, partner_id, first_paid_at, first_payment_reference)
            VALUES (p_provider, p_customer_id, p_partner_id, p_paid_at, p_reference)
            ON CONFLICT (provider, customer_id) DO NOTHING;
        END IF;
        RETURN p_partner_id;
    END IF;
    IF v_customer.partner_id IS NULL OR p_reference IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_customer.first_payment_reference IS NULL THEN
        UPDATE customers c SET first_payment_reference = p_reference
         WHERE c.provider = p_provider AND c.customer_id = p_customer_id;
        RETURN v_customer.partner_id;
    END IF;
    SELECT p.recurring_months INTO v_months FROM partners p WHERE p.id = v_customer.partner_id;
    -- Within [first, first + months): a payment dated before the customer's
    -- first attributed one is not in the window either.
    IF p_paid_at >= v_customer.first_paid_at
       AND (v_months IS NULL OR p_paid_at < v_customer.first_paid_at + make_interval(months => v_months)) THEN
        RETURN v_customer.partner_id;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION attribute_payment(text, text, bigint, timestamptz, text) IS
    'The partner a provider''s payment earns for: the one its metadata names (attributing the customer if it was not yet), else the customer''s partner while within that partner''s recurring_months of the first attributed payment, else NULL. Called by the engine when it records a provider''s payment.';

CREATE OR REPLACE FUNCTION apply_stored_event_before_verify(p_provider text, p_event_id text)
RETURNS webhook_events
LANGUAGE plpgsql
AS $$
DECLARE
    e             webhook_events;
    v_outcome     text;
    v_parked      text;
    v_payment_id  bigint;
    v_minor_units smallint;
    v_amount      numeric;
    v_payment     payments;
    v_changed     boolean;
    v_partner_id  bigint;
BEGIN
    SELECT * INTO e FROM webhook_events w WHERE w.provider = p_provider AND w.event_id = p_event_id;
    IF e.reference IS NOT NULL THEN
        SELECT * INTO v_payment FROM payments p
         WHERE p.provider = e.provider AND p.provider_reference = e.reference
           FOR UPDATE;
    END IF;

    IF e.action = 'verify' THEN
        IF e.currency ~ '^[A-Za-z]{3}$' THEN
            SELECT c.minor_units INTO v_minor_units FROM currencies c WHERE c.code = upper(e.currency)::char(3);
        END IF;
        IF v_payment.id IS NOT NULL THEN
            v_payment_id := v_payment.id;
            -- The payment came first with nothing naming its partner (its
            -- payment intent's own event): this one still attributes the
            -- customer, so its later payments earn.
            IF e.partner_id IS NOT NULL AND e.customer_id IS NOT NULL THEN
                PERFORM attribute_payment(e.provider, e.customer_id, e.partner_id,
                                          coalesce(e.occurred_at, e.received_at), e.reference);
            END IF;
            v_outcome := CASE v_payment.status
                             WHEN 'pending'  THEN 'verified'
                             WHEN 'failed'   THEN 'illegal_transition'
                             ELSE 'already_verified'
                         END;
        ELSIF v_minor_units IS NULL THEN
            v_outcome := 'parked'; v_parked := 'unsupported_currency';
        ELSIF e.amount_minor IS NULL OR e.amount_minor <= 0
              OR money_from_minor_units(e.amount_minor, v_minor_units) >= max_payment_amount() THEN
            -- Zero, negative, or more than a payment can hold (numeric(20, 4)).
            v_outcome := 'invalid_amount';
        ELSIF e.partner_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM partners WHERE id = e.partner_id) THEN
            v_outcome := 'parked'; v_parked := 'unknown_partner';
        ELSE
            -- Recorded pending, then verified: a provider's payment passes
            -- through the same state machine as a manual one.
            v_partner_id := attribute_payment(e.provider, e.customer_id, e.partner_id,
                                              coalesce(e.occurred_at, e.received_at), e.reference);
            INSERT INTO payments (amount, currency, partner_id, provider, provider_reference, customer_id)
            VALUES (money_from_minor_units(e.amount_minor, v_minor_units), upper(e.currency), v_partner_id,
                    e.provider, e.reference, e.customer_id)
            RETURNING id INTO v_payment_id;
            v_outcome := 'verified';
        END IF;
    ELSIF e.action IN ('refund_cumulative', 'refund', 'dispute') THEN
        IF v_payment.id IS NULL THEN
            v_outcome := 'parked'; v_parked := 'unknown_payment';
        ELSIF v_payment.status = 'pending' THEN
            v_outcome := 'parked'; v_parked := 'payment_not_verified'; v_payment_id := v_payment.id;
        ELSIF v_payment.status = 'failed' THEN
            v_outcome := 'illegal_transition'; v_payment_id := v_payment.id;
        ELSIF e.amount_minor IS NOT NULL AND e.amount_minor < 0 THEN
            v_outcome := 'invalid_amount'; v_payment_id := v_payment.id;
        ELSE
            v_payment_id := v_payment.id;
            -- In the payment's own minor units, capped at what was paid.
            v_amount := least(v_payment.amount, money_from_minor_units(e.amount_minor, v_payment.minor_units));
            IF e.action = 'dispute' THEN
                IF e.object_id IS NULL OR dispute_state_rank(e.object_state) IS NULL THEN
                    v_outcome := 'ignored';
                ELSE
                    INSERT INTO disputes AS d (provider, dispute_id, payment_id, amount, state)
                    VALUES (e.provider, e.object_id, v_payment.id, coalesce(nullif(v_amount, 0), v_payment.amount), e.object_state)
                    ON CONFLICT (provider, dispute_id) DO UPDATE
                       SET state = EXCLUDED.state, amount = EXCLUDED.amount, updated_at = now()
                     WHERE dispute_state_rank(d.state) < dispute_state_rank(EXCLUDED.state);
                    v_outcome := CASE WHEN FOUND THEN 'dispute_updated' ELSE 'unchanged' END;
                END IF;
            ELSE
                IF e.amount_minor IS NULL THEN
                    -- A refund must say how much: never guess "all of it".
                    v_outcome := 'invalid_amount';
                ELSE
                    v_amount := CASE
                        WHEN e.action = 'refund_cumulative' THEN greatest(v_payment.refunded_amount, v_amount)
                        ELSE least(v_payment.amount, v_payment.refunded_amount + v_amount)
                    END;
                    v_changed := v_amount > v_payment.refunded_amount;
                    IF v_changed THEN
                        UPDATE payments SET refunded_amount = v_amount WHERE id = v_payment.id;
                    END IF;
                    v_outcome := CASE WHEN v_changed THEN 'refunded' ELSE 'unchanged' END;
                END IF;
            END IF;
        END IF;
    ELSIF e.action = 'attribute' THEN
        -- A subscription invoice that names no payment of its own (Stripe's
        -- API from 2025-03-31 on): its payment comes as a payment intent,
        -- and this only says which partner brought the customer.
        IF e.customer_id IS NULL OR e.partner_id IS NULL THEN
            v_outcome := 'ignored';
        ELSIF NOT EXISTS (SELECT 1 FROM partners WHERE id = e.partner_id) THEN
            v_outcome := 'parked'; v_parked := 'unknown_partner';
        ELSE
            PERFORM attribute_payment(e.provider, e.customer_id, e.partner_id,
                                      coalesce(e.occurred_at, e.received_at), NULL);
            v_outcome := 'attributed';
        END IF;
    ELSE
        -- The service already knows the outcome (an unsupported event type,
        -- a partner id that is not a number): record it.
        v_outcome := e.action;
    END IF;

    UPDATE webhook_events w
       SET outcome = v_outcome,
           payment_id = v_payment_id,
           parked_reason = coalesce(v_parked, w.parked_reason),
           applied_at = CASE WHEN v_outcome <> 'parked' AND w.outcome = 'parked' THEN now() END
     WHERE w.provider = e.provider AND w.event_id = e.event_id
    RETURNING * INTO e;
    RETURN e;
END
$$;
COMMENT ON FUNCTION apply_stored_event_before_verify(text, text) IS
    'Engine internals: applies one event of webhook_events as its action says (see the head of sql/07_webhooks.sql) and records the outcome, or parks it with its reason, all but the verification itself: an outcome of verified leaves its payment pending, locked, for the caller to verify.';

CREATE OR REPLACE FUNCTION apply_stored_event(p_provider text, p_event_id text)
RETURNS webhook_events
LANGUAGE plpgsql
AS $$
DECLARE
    e webhook_events := apply_stored_event_before_verify(p_provider, p_event_id);
BEGIN
    -- The engine runs last, after every row this event touches is written.
    IF e.outcome = 'verified' THEN
        PERFORM verify_payment(e.payment_id);
    END IF;
    RETURN e;
END
$$;
COMMENT ON FUNCTION apply_stored_event(text, text) IS
    'Engine internals: applies one event of webhook_events as its action says (see the head of sql/07_webhooks.sql) and records the outcome, or parks it with its reason.';

DROP FUNCTION IF EXISTS apply_webhook_event(text, text, text, jsonb, text, text, bigint, text, bigint);
-- The customer became the 13th argument; the 12-argument version would make
-- calls ambiguous.
DROP FUNCTION IF EXISTS apply_webhook_event(text, text, text, jsonb, text, text, bigint, text, bigint, text, text, timestamptz);

-- Its insert-and-lock step is inline again below: a batch records its
-- events in one statement (apply_webhook_events).
DROP FUNCTION IF EXISTS record_webhook_event(text, text, text, jsonb, text, text, bigint, text, bigint, text, text, timestamptz, text);

CREATE OR REPLACE FUNCTION apply_webhook_event(
    p_provider      text,
    p_event_id      text,
    p_event_type    text,
    p_payload       jsonb,
    p_action        text,
    p_reference     text,
    p_amount_minor  bigint,
    p_currency      text,
    p_partner_id    bigint,
    p_object_id     text,
    p_object_state  text,
    p_occurred_at   timestamptz,
    p_customer_id   text DEFAULT NULL)
RETURNS TABLE (outcome text, payment_id bigint, parked_reason text)
LANGUAGE plpgsql
AS $$
DECLARE
    e webhook_events;
BEGIN
    -- A redelivery racing the first delivery waits on this primary key until
    -- that commits, then finds the row and changes nothing.
    INSERT INTO webhook_events (provider, event_id, event_type, outcome, payload, action, reference,
                                amount_minor, currency, partner_id, object_id, object_state, occurred_at, customer_id)
    VALUES (p_provider, p_event_id, p_event_type, 'processing', p_payload, p_action, p_reference,
            p_amount_minor, p_currency, p_partner_id, p_object_id, p_object_state, p_occurred_at, p_customer_id)
    ON CONFLICT (provider, event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::bigint, NULL::text;
        RETURN;
    END IF;
    IF p_reference IS NOT NULL THEN
        PERFORM provider_reference_lock(p_provider, p_reference);
    END IF;
    e := apply_stored_event(p_provider, p_event_id);
    RETURN QUERY SELECT e.outcome, e.payment_id, e.parked_reason;
END
$$;
COMMENT ON FUNCTION apply_webhook_event(text, text, text, jsonb, text, text, bigint, text, bigint, text, text, timestamptz, text) IS
    'Applies one signature-checked provider event: records it in webhook_events (a redelivery returns duplicate and changes nothing), then applies it or parks it. Returns the outcome, the payment and why it is parked. Called by the service once per webhook.';

-- Many events, one transaction (the service's batcher,
-- src/db/webhook_batch.rs): one COMMIT, one WAL flush and one NOTIFY per
-- partner for the lot, and the engine runs once over every payment the batch verifies.
--
-- Each event goes through the same steps as apply_webhook_event, so its
-- outcome is the one it would have had alone. The rules that keep it so:
--   * Locks in one order for every batch, so two batches in flight at once
--     wait for each other instead of deadlocking: first every new event's
--     row (its primary key, which a redelivery in another transaction waits
--     on) in (provider, event_id) order, then every reference in
--     (provider, reference) order, then their payments in id order (as a
--     payout run and verify_payments take them), then customers.
--   * The first delivery of an event id in the batch is recorded; a later
--     one, or one recorded by an earlier transaction, is duplicate.
--   * The common case is done set-based, in three statements for the whole
--     batch: a payment event ('verify') about a reference no other event of
--     the batch names and no payment has yet, in a known currency, with a
--     valid amount, a partner that exists or none, and no customer to
--     attribute. Those are exactly the events whose outcome alone is
--     verified without reading anything another event of the batch writes.
--   * Every other event is applied one by one, in arrival order, by the
--     steps apply_webhook_event takes (a customer's attribution spans
--     references: an event sees what the events before it attributed).
--   * The common case's payments are recorded verified, so the engine earns
--     them in their INSERT. The one-by-one events' verifications wait until
--     the end, so that the engine earns them in one more statement; but an
--     event about a payment the batch is about to
--     verify first has those verifications done, so that it sees the
--     payment as it would have alone (a refund right behind its charge
--     refunds it, a second charge event for it is already_verified).
-- A customer's row (recurring attribution) is locked after its payment's
-- reference, as it is alone; two batches whose payments share customers in
-- crossed order can deadlock, and PostgreSQL's deadlock check
-- (deadlock_timeout, 1 s by default) fails one of them, whose events are
-- then applied alone.
-- An error anywhere (a deadlock with a DBA, a constraint a DBA added) rolls
-- the whole batch back and the service applies each of its events alone,
-- so one bad event costs its neighbours a retry, never their answer.
CREATE OR REPLACE FUNCTION webhook_batch_events(p_events jsonb)
RETURNS TABLE (n integer, provider text, event_id text, event_type text, payload jsonb, action text,
               reference text, amount_minor bigint, currency text, partner_id bigint, object_id text,
               object_state text, occurred_at timestamptz, customer_id text)
LANGUAGE sql STABLE
AS $$
    SELECT o.n::integer, x.*
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS o (event, n)
     CROSS JOIN LATERAL jsonb_to_record(o.event) AS x (
           provider text, event_id text, event_type text, payload jsonb, action text, reference text,
           amount_minor bigint, currency text, partner_id bigint, object_id text, object_state text,
           occurred_at timestamptz, customer_id text)
$$;
COMMENT ON FUNCTION webhook_batch_events(jsonb) IS
    'Engine internals: the events of an apply_webhook_events batch as rows, each with its 1-based position n.';

CREATE OR REPLACE FUNCTION apply_webhook_events(p_events jsonb)
RETURNS TABLE (ordinal integer, outcome text, payment_id bigint, parked_reason text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    r             record;
    e             webhook_events;
    v_events      webhook_batch_event[];  -- the batch, read from its JSON once
    v_new         webhook_batch_event[];  -- those this batch records (not duplicates)
    v_fast        integer[] := '{}';  -- positions of those verified set-based
    v_fast_paid   bigint[]  := '{}';  -- and their payments
    v_pending     bigint[]  := '{}';  -- payments to verify, recorded or found pending one by one
    v_references  text[]    := '{}';  -- their provider:reference
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'apply_webhook_events takes a JSON array of events, not %', coalesce(jsonb_typeof(p_events), 'NULL')
            USING ERRCODE = 'CM002';
    END IF;
    v_events := ARRAY(SELECT ROW(x.*)::webhook_batch_event FROM webhook_batch_events(p_events) x ORDER BY x.n);

    -- Record: each event id's first delivery in the batch, if no earlier
    -- transaction recorded it.
    WITH firsts AS (
        SELECT DISTINCT ON (x.provider, x.event_id) x.*
          FROM unnest(v_events) x
         ORDER BY x.provider, x.event_id, x.n
    ), recorded AS (
        INSERT INTO webhook_events AS w (provider, event_id, event_type, outcome, payload, action, reference,
                                         amount_minor, currency, partner_id, object_id, object_state, occurred_at, customer_id)
        SELECT f.provider, f.event_id, f.event_type, 'processing', f.payload, f.action, f.reference,
               f.amount_minor, f.currency, f.partner_id, f.object_id, f.object_state, f.occurred_at, f.customer_id
          FROM firsts f
         ORDER BY f.provider, f.event_id
        ON CONFLICT (provider, event_id) DO NOTHING
        RETURNING w.provider, w.event_id
    )
    SELECT coalesce(array_agg(f::webhook_batch_event ORDER BY f.n), '{}') INTO v_new
      FROM firsts f JOIN recorded k ON k.provider = f.provider AND k.event_id = f.event_id;

    PERFORM provider_reference_lock(k.provider, k.reference)
       FROM (SELECT DISTINCT x.provider, x.reference FROM unnest(v_new) x
              WHERE x.reference IS NOT NULL
              ORDER BY x.provider, x.reference) k;
    -- Their payments, in id order, as a payout run and verify_payments lock
    -- them. Each is found, then locked, through its index, one by one: the
    -- plan PL/pgSQL keeps for a statement is made once per session, and one
    -- made while payments was small hashed the whole table on every batch
    -- after it had grown (a nested loop over an index stays cheap at any size).
    PERFORM 1
       FROM (SELECT q.id
               FROM (SELECT DISTINCT x.provider, x.reference FROM unnest(v_new) x WHERE x.reference IS NOT NULL) k
              CROSS JOIN LATERAL (SELECT p.id FROM payments p
                                   WHERE p.provider = k.provider AND p.provider_reference = k.reference
                                   LIMIT 1) q  -- (one at most: it is unique)
              ORDER BY q.id) i
      CROSS JOIN LATERAL (SELECT 1 FROM payments p WHERE p.id = i.id FOR UPDATE) l;

    -- The common case, set-based (see above for which events qualify). Its
    -- payments are recorded verified, in one INSERT that runs the engine
    -- once: the row a pending INSERT and its UPDATE would leave (both
    -- states are stamped with this transaction's now()), at one write
    -- instead of two. Their ids are drawn first, so each event's row names
    -- its payment without matching the INSERT's output back to the events.
    WITH candidates AS (
        SELECT x.*, c.minor_units,
               count(*) OVER (PARTITION BY x.provider, x.reference) AS named
          FROM unnest(v_new) x
          LEFT JOIN currencies c ON x.currency ~ '^[A-Za-z]{3}$' AND c.code = upper(x.currency)::char(3)
    ), fast AS (
        SELECT x.*, nextval(pg_get_serial_sequence('payments', 'id')) AS payment_id
          FROM candidates x
         WHERE x.action = 'verify' AND x.reference IS NOT NULL AND x.customer_id IS NULL AND x.named = 1
           AND x.minor_units IS NOT NULL
           AND x.amount_minor > 0 AND money_from_minor_units(x.amount_minor, x.minor_units) < max_payment_amount()
           AND (x.partner_id IS NULL OR EXISTS (SELECT 1 FROM partners pa WHERE pa.id = x.partner_id))
           AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.provider = x.provider AND p.provider_reference = x.reference)
    ), paid AS (
        INSERT INTO payments AS p (id, amount, currency, partner_id, provider, provider_reference, customer_id, status)
        OVERRIDING SYSTEM VALUE
        SELECT f.payment_id, money_from_minor_units(f.amount_minor, f.minor_units), upper(f.currency), f.partner_id,
               f.provider, f.reference, NULL, 'verified'
          FROM fast f
         ORDER BY f.payment_id
    ), marked AS (
        UPDATE webhook_events w SET outcome = 'verified', payment_id = f.payment_id
          FROM fast f
         WHERE w.provider = f.provider AND w.event_id = f.event_id
        RETURNING f.n, f.payment_id
    )
    SELECT coalesce(array_agg(m.n), '{}'), coalesce(array_agg(m.payment_id), '{}') INTO v_fast, v_fast_paid FROM marked m;
    RETURN QUERY SELECT f.n, 'verified'::text, f.id, NULL::text FROM unnest(v_fast, v_fast_paid) AS f (n, id);
    RETURN QUERY SELECT x.n, 'duplicate'::text, NULL::bigint, NULL::text
                   FROM unnest(v_events) x
                  WHERE NOT EXISTS (SELECT 1 FROM unnest(v_new) y WHERE y.n = x.n);

    -- The rest, one by one, in arrival order: a customer's attribution
    -- spans references, so an event must see what the events before it did.
    -- (Every lock on references and payments is held already.)
    FOR r IN
        SELECT x.n, x.provider, x.event_id, x.reference FROM unnest(v_new) x
         WHERE x.n <> ALL (v_fast)
         ORDER BY x.n
    LOOP
        IF r.reference IS NOT NULL AND (r.provider || ':' || r.reference) = ANY (v_references) THEN
            -- (EXECUTE: planned at the table's size of the moment, as in verify_payments.)
            EXECUTE 'UPDATE payments SET status = ''verified'' WHERE id = ANY ($1)' USING v_pending;
            v_pending := '{}';
            v_references := '{}';
        END IF;
        e := apply_stored_event_before_verify(r.provider, r.event_id);
        IF e.outcome = 'verified' THEN
            v_pending := v_pending || e.payment_id;
            v_references := v_references || (r.provider || ':' || r.reference);
        END IF;
        RETURN QUERY SELECT r.n, e.outcome, e.payment_id, e.parked_reason;
    END LOOP;
    IF cardinality(v_pending) > 0 THEN
        EXECUTE 'UPDATE payments SET status = ''verified'' WHERE id = ANY ($1)' USING v_pending;
    END IF;
END
$$;
COMMENT ON FUNCTION apply_webhook_events(jsonb) IS
    'Applies many signature-checked provider events in one transaction, each as apply_webhook_event would alone (a JSON array of objects with its arguments as keys: provider, event_id, event_type, payload, action, reference, amount_minor, currency, partner_id, object_id, object_state, occurred_at, customer_id). Returns each event''s outcome by its position in the array (1-based). Called by the service''s webhook batcher.';

CREATE OR REPLACE FUNCTION apply_parked_events(p_provider text, p_reference text)
RETURNS int
LANGUAGE plpgsql
AS $$
DECLARE
    v_event_id text;
    v_applied  int := 0;
BEGIN
    -- In the provider's order where it says (occurred_at), else as received.
    FOR v_event_id IN
        SELECT w.event_id FROM webhook_events w
         WHERE w.provider = p_provider AND w.reference = p_reference AND w.outcome = 'parked'
           AND w.action IN ('refund_cumulative', 'refund', 'dispute')
         ORDER BY w.occurred_at NULLS LAST, w.received_at, w.event_id
           FOR UPDATE
    LOOP
        IF (apply_stored_event(p_provider, v_event_id)).outcome <> 'parked' THEN
            v_applied := v_applied + 1;
        END IF;
    END LOOP;
    RETURN v_applied;
END
$$;
COMMENT ON FUNCTION apply_parked_events(text, text) IS
    'Engine internals: applies the refunds and disputes parked for one provider reference (called by the engine, with the payment''s row locked, when that payment is verified). Returns how many applied.';

CREATE OR REPLACE FUNCTION next_parked_events(p_provider text, p_event_id text, p_limit integer)
RETURNS TABLE (provider text, event_id text, reference text)
LANGUAGE sql STABLE
AS $$
    SELECT w.provider, w.event_id, w.reference FROM webhook_events w
     WHERE w.outcome = 'parked'
       AND (p_provider IS NULL OR w.provider = p_provider)
       AND (p_event_id IS NULL OR w.event_id = p_event_id)
     -- Those tried longest ago first, so that calls with a limit take turns
     -- through a backlog instead of retrying its head; then payments first,
     -- so that their refunds and disputes find them.
     ORDER BY w.reapplied_at NULLS FIRST, (w.action = 'verify') DESC,
              w.occurred_at NULLS LAST, w.received_at, w.event_id
     LIMIT p_limit
$$;
COMMENT ON FUNCTION next_parked_events(text, text, integer) IS
    'The parked events reapply_parked_events tries next, in its order (at most p_limit; NULL filters match all). The API re-applies them one transaction each.';

-- p_limit became the third argument; the old two-argument version would
-- make calls ambiguous.
DROP FUNCTION IF EXISTS reapply_parked_events(text, text);

CREATE OR REPLACE FUNCTION reapply_parked_events(
    p_provider text DEFAULT NULL,
    p_event_id text DEFAULT NULL,
    p_limit    integer DEFAULT NULL)
RETURNS TABLE (provider text, event_id text, event_type text, outcome text, parked_reason text, payment_id bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    k record;
    e webhook_events;
BEGIN
    -- One re-apply at a time: each takes several references' locks in the
    -- order of its events, and two at once could take them crosswise.
    PERFORM pg_advisory_xact_lock(7164946332151808202);
    FOR k IN SELECT * FROM next_parked_events(p_provider, p_event_id, p_limit)
    LOOP
        -- In the lock order (reference, payment, event). Applying one event may
        -- already have applied others (a payment takes its parked refunds with
        -- it): take each only while it is still parked.
        BEGIN
            IF k.reference IS NOT NULL THEN
                PERFORM provider_reference_lock(k.provider, k.reference);
                PERFORM 1 FROM payments p WHERE p.provider = k.provider AND p.provider_reference = k.reference FOR UPDATE;
            END IF;
            PERFORM 1 FROM webhook_events w
              WHERE w.provider = k.provider AND w.event_id = k.event_id AND w.outcome = 'parked'
                FOR UPDATE;
            IF FOUND THEN
                e := apply_stored_event(k.provider, k.event_id);
                UPDATE webhook_events w SET reapplied_at = now()
                 WHERE w.provider = k.provider AND w.event_id = k.event_id;
            END IF;
        EXCEPTION WHEN deadlock_detected THEN
            -- Several events in one transaction hold the locks of the ones
            -- before while taking the next one's: against a webhook or a
            -- payout run that takes them the other way round, PostgreSQL may
            -- pick this event to break the cycle. Its locks are let go with
            -- it and it stays parked, for the next call; the others go on.
            NULL;
        END;
        SELECT * INTO e FROM webhook_events w WHERE w.provider = k.provider AND w.event_id = k.event_id;
        RETURN QUERY SELECT e.provider, e.event_id, e.event_type, e.outcome, e.parked_reason, e.payment_id;
    END LOOP;
END
$$;
COMMENT ON FUNCTION reapply_parked_events(text, text, integer) IS
    'Operators: tries every parked provider event again (or one provider''s, or one event, or at most p_limit of them, those tried longest ago first), e.g. after creating the partner or adding the currency it waited for. Returns each event tried with its outcome now; those that still cannot apply stay parked. SELECT * FROM reapply_parked_events();';
