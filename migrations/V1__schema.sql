-- The data the commission engine works on. Tables only: the rules that move
-- money live in sql/ (functions and triggers, re-applied on every migrate).
-- Once landed, this file is never edited; later changes are V2__, V3__, ...

CREATE TYPE payment_status AS ENUM ('pending', 'verified', 'failed', 'refunded');
COMMENT ON TYPE payment_status IS
    'Lifecycle of a payment: pending -> verified -> refunded, or pending -> failed. Checked by the trigger payments_check_transition.';

CREATE TYPE commission_kind AS ENUM ('earned', 'reversed');
COMMENT ON TYPE commission_kind IS
    'A ledger entry either earns a commission (payment verified) or reverses it (payment refunded).';

CREATE TABLE currencies (
    code        char(3)  PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    minor_units smallint NOT NULL CHECK (minor_units BETWEEN 0 AND 4),
    name        text     NOT NULL
);
COMMENT ON TABLE currencies IS 'ISO 4217 currencies the engine accepts, with the number of minor units each rounds to.';
COMMENT ON COLUMN currencies.code IS 'ISO 4217 alphabetic code, e.g. NGN.';
COMMENT ON COLUMN currencies.minor_units IS 'Digits after the decimal point: NGN 2, JPY 0, KWD 3. Every amount in this currency is rounded to it, half away from zero.';
COMMENT ON COLUMN currencies.name IS 'English name of the currency.';

INSERT INTO currencies (code, minor_units, name) VALUES
    ('AED', 2, 'UAE Dirham'),
    ('AUD', 2, 'Australian Dollar'),
    ('BHD', 3, 'Bahraini Dinar'),
    ('BRL', 2, 'Brazilian Real'),
    ('CAD', 2, 'Canadian Dollar'),
    ('CHF', 2, 'Swiss Franc'),
    ('CLP', 0, 'Chilean Peso'),
    ('CNY', 2, 'Yuan Renminbi'),
    ('EGP', 2, 'Egyptian Pound'),
    ('EUR', 2, 'Euro'),
    ('GBP', 2, 'Pound Sterling'),
    ('GHS', 2, 'Ghana Cedi'),
    ('INR', 2, 'Indian Rupee'),
    ('JOD', 3, 'Jordanian Dinar'),
    ('JPY', 0, 'Yen'),
    ('KES', 2, 'Kenyan Shilling'),
    ('KRW', 0, 'Won'),
    ('KWD', 3, 'Kuwaiti Dinar'),
    ('MAD', 2, 'Moroccan Dirham'),
    ('MXN', 2, 'Mexican Peso'),
    ('NGN', 2, 'Naira'),
    ('OMR', 3, 'Rial Omani'),
    ('RWF', 0, 'Rwanda Franc'),
    ('SAR', 2, 'Saudi Riyal'),
    ('SEK', 2, 'Swedish Krona'),
    ('TND', 3, 'Tunisian Dinar'),
    ('TZS', 2, 'Tanzanian Shilling'),
    ('UGX', 0, 'Uganda Shilling'),
    ('USD', 2, 'US Dollar'),
    ('XAF', 0, 'CFA Franc BEAC'),
    ('XOF', 0, 'CFA Franc BCEAO'),
    ('ZAR', 2, 'Rand');

CREATE TABLE partners (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text          NOT NULL CONSTRAINT partners_name_not_blank CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    commission_rate numeric(7, 6) NOT NULL DEFAULT 0.02
                    CONSTRAINT partners_commission_rate_range CHECK (commission_rate >= 0 AND commission_rate <= 1),
    last_seq        bigint        NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at      timestamptz   NOT NULL DEFAULT now(),
    updated_at      timestamptz   NOT NULL DEFAULT now()
);
COMMENT ON TABLE partners IS 'Partners who earn a commission on the payments attributed to them.';
COMMENT ON COLUMN partners.id IS 'Partner id, used in tokens, URLs, webhook metadata and the NOTIFY channel commissions_partner_<id>.';
COMMENT ON COLUMN partners.name IS 'Display name.';
COMMENT ON COLUMN partners.commission_rate IS 'Share of a verified payment paid as commission, 0 to 1 (0.02 = 2%). Applies to payments verified after a change.';
COMMENT ON COLUMN partners.last_seq IS 'Sequence number of the partner''s latest event. Bumped by the engine under the row lock, so per partner it is gapless and in commit order.';
COMMENT ON COLUMN partners.created_at IS 'When the partner was created.';
COMMENT ON COLUMN partners.updated_at IS 'When the partner row last changed (rate, name or sequence).';

CREATE TABLE payments (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    amount             numeric(20, 4) NOT NULL CONSTRAINT payments_amount_positive CHECK (amount > 0),
    currency           char(3)        NOT NULL REFERENCES currencies (code),
    status             payment_status NOT NULL DEFAULT 'pending',
    partner_id         bigint         REFERENCES partners (id),
    provider           text           NOT NULL DEFAULT 'manual'
                       CONSTRAINT payments_provider_known CHECK (provider IN ('manual', 'stripe', 'paystack')),
    provider_reference text           CONSTRAINT payments_provider_reference_not_blank CHECK (length(btrim(provider_reference)) BETWEEN 1 AND 200),
    created_at         timestamptz    NOT NULL DEFAULT now(),
    updated_at         timestamptz    NOT NULL DEFAULT now(),
    verified_at        timestamptz,
    refunded_at        timestamptz,
    CONSTRAINT payments_provider_reference_unique UNIQUE (provider, provider_reference)
);
CREATE INDEX payments_partner_idx ON payments (partner_id, id);
COMMENT ON TABLE payments IS 'Payments as recorded by an operator or a provider webhook. Verifying one is what earns a commission.';
COMMENT ON COLUMN payments.id IS 'Payment id.';
COMMENT ON COLUMN payments.amount IS 'Amount paid, in major units (100.00 NGN is 100.00), with no more decimals than the currency has.';
COMMENT ON COLUMN payments.currency IS 'ISO 4217 code; must exist in currencies.';
COMMENT ON COLUMN payments.status IS 'pending, verified, failed or refunded. Only legal transitions are accepted (see payments_check_transition).';
COMMENT ON COLUMN payments.partner_id IS 'Partner credited with the commission; NULL earns nothing.';
COMMENT ON COLUMN payments.provider IS 'Where the payment came from: manual (an operator), stripe or paystack.';
COMMENT ON COLUMN payments.provider_reference IS 'The provider''s own id for the payment (Stripe payment intent, Paystack reference); unique per provider.';
COMMENT ON COLUMN payments.created_at IS 'When the payment was recorded.';
COMMENT ON COLUMN payments.updated_at IS 'When the payment last changed status.';
COMMENT ON COLUMN payments.verified_at IS 'When the payment became verified.';
COMMENT ON COLUMN payments.refunded_at IS 'When the payment was refunded.';

CREATE TABLE commissions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id     bigint          NOT NULL REFERENCES payments (id),
    partner_id     bigint          NOT NULL REFERENCES partners (id),
    kind           commission_kind NOT NULL,
    amount         numeric(20, 4)  NOT NULL CONSTRAINT commissions_amount_positive CHECK (amount > 0),
    currency       char(3)         NOT NULL REFERENCES currencies (code),
    rate           numeric(7, 6)   NOT NULL,
    payment_amount numeric(20, 4)  NOT NULL,
    created_at     timestamptz     NOT NULL DEFAULT now(),
    CONSTRAINT commissions_one_per_payment_and_kind UNIQUE (payment_id, kind)
);
CREATE INDEX commissions_partner_page_idx ON commissions (partner_id, id DESC);
COMMENT ON TABLE commissions IS 'Append-only commission ledger: one earned entry per verified payment, one reversed entry per refund. Never updated or deleted.';
COMMENT ON COLUMN commissions.id IS 'Ledger entry id; increases with time, used as the keyset cursor.';
COMMENT ON COLUMN commissions.payment_id IS 'The payment this entry is for. At most one earned and one reversed entry per payment (commissions_one_per_payment_and_kind).';
COMMENT ON COLUMN commissions.partner_id IS 'The partner credited (earned) or debited (reversed).';
COMMENT ON COLUMN commissions.kind IS 'earned when the payment was verified, reversed when it was refunded.';
COMMENT ON COLUMN commissions.amount IS 'Commission amount, always positive, rounded to the currency''s minor units; kind gives the direction.';
COMMENT ON COLUMN commissions.currency IS 'Currency of the payment and of the commission.';
COMMENT ON COLUMN commissions.rate IS 'The partner''s rate when the commission was earned (a reversal repeats it).';
COMMENT ON COLUMN commissions.payment_amount IS 'The payment amount the commission was computed from.';
COMMENT ON COLUMN commissions.created_at IS 'When the entry was written (the transaction''s time).';

CREATE TABLE partner_balances (
    partner_id bigint         NOT NULL REFERENCES partners (id),
    currency   char(3)        NOT NULL REFERENCES currencies (code),
    earned     numeric(20, 4) NOT NULL DEFAULT 0,
    pending    numeric(20, 4) NOT NULL DEFAULT 0,
    paid       numeric(20, 4) NOT NULL DEFAULT 0,
    reversed   numeric(20, 4) NOT NULL DEFAULT 0,
    updated_at timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (partner_id, currency)
);
COMMENT ON TABLE partner_balances IS 'Running totals per partner and currency, kept by the engine in the same transaction as the ledger. Audited by commission_audit.';
COMMENT ON COLUMN partner_balances.partner_id IS 'The partner.';
COMMENT ON COLUMN partner_balances.currency IS 'The currency of these totals.';
COMMENT ON COLUMN partner_balances.earned IS 'Sum of earned ledger entries, ever.';
COMMENT ON COLUMN partner_balances.pending IS 'Owed to the partner and not yet paid out: earned - reversed - paid.';
COMMENT ON COLUMN partner_balances.paid IS 'Paid out to the partner (payouts come later; 0 until then).';
COMMENT ON COLUMN partner_balances.reversed IS 'Sum of reversed ledger entries (refunds).';
COMMENT ON COLUMN partner_balances.updated_at IS 'When the totals last changed.';

CREATE TABLE commission_events (
    position    bigint      PRIMARY KEY,
    partner_id  bigint      NOT NULL REFERENCES partners (id),
    seq         bigint      NOT NULL CHECK (seq > 0),
    type        text        NOT NULL CHECK (type ~ '^[a-z]+\.[a-z_]+$'),
    data        jsonb       NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT commission_events_partner_seq_unique UNIQUE (partner_id, seq)
);
CREATE SEQUENCE commission_events_position_seq AS bigint OWNED BY commission_events.position;
COMMENT ON TABLE commission_events IS 'The durable event log the WebSocket relay replays from: every event ever notified, in commit order per partner (seq) and globally (position).';
COMMENT ON COLUMN commission_events.position IS 'Global cursor for the admin room. Taken under a transaction-scoped advisory lock held through commit, so positions are in commit order.';
COMMENT ON COLUMN commission_events.partner_id IS 'The partner whose room receives the event.';
COMMENT ON COLUMN commission_events.seq IS 'The partner''s event number: 1, 2, 3, ... with no gap, in commit order. Clients resume with ?since=<seq>.';
COMMENT ON COLUMN commission_events.type IS 'commission.created, commission.reversed (later: payout.*).';
COMMENT ON COLUMN commission_events.data IS 'Event body as sent on the wire: amounts as decimal strings, the partner''s new totals for that currency.';
COMMENT ON COLUMN commission_events.occurred_at IS 'When the event happened (the transaction''s time).';
COMMENT ON SEQUENCE commission_events_position_seq IS 'Source of commission_events.position; only the engine draws from it, under its advisory lock.';

CREATE TABLE notifications (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id bigint      NOT NULL REFERENCES partners (id),
    event_position bigint  NOT NULL REFERENCES commission_events (position),
    title      text        NOT NULL,
    body       text        NOT NULL,
    read_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_partner_idx ON notifications (partner_id, id DESC);
COMMENT ON TABLE notifications IS 'Human-readable notices for a partner, one per event; read or unread.';
COMMENT ON COLUMN notifications.id IS 'Notification id.';
COMMENT ON COLUMN notifications.partner_id IS 'The partner the notice is for.';
COMMENT ON COLUMN notifications.event_position IS 'The event that caused it.';
COMMENT ON COLUMN notifications.title IS 'Short title, e.g. "Commission earned".';
COMMENT ON COLUMN notifications.body IS 'One sentence with the amount and the payment.';
COMMENT ON COLUMN notifications.read_at IS 'When the partner marked it read; NULL while unread.';
COMMENT ON COLUMN notifications.created_at IS 'When it was written.';

CREATE TABLE webhook_events (
    provider    text        NOT NULL CHECK (provider IN ('stripe', 'paystack')),
    event_id    text        NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
    event_type  text        NOT NULL,
    outcome     text        NOT NULL,
    payment_id  bigint      REFERENCES payments (id),
    payload     jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
COMMENT ON TABLE webhook_events IS 'Every provider event accepted, stored in the same transaction as its effect, so a redelivery is recognised and changes nothing.';
COMMENT ON COLUMN webhook_events.provider IS 'stripe or paystack.';
COMMENT ON COLUMN webhook_events.event_id IS 'The provider''s event id (Stripe evt_..., Paystack event + reference); unique per provider.';
COMMENT ON COLUMN webhook_events.event_type IS 'The provider''s event type, e.g. payment_intent.succeeded.';
COMMENT ON COLUMN webhook_events.outcome IS 'What the service did: verified, refunded, ignored (unsupported type), unknown_partner, ...';
COMMENT ON COLUMN webhook_events.payment_id IS 'The payment it changed, if any.';
COMMENT ON COLUMN webhook_events.payload IS 'The event body as received.';
COMMENT ON COLUMN webhook_events.received_at IS 'When it was received.';

CREATE TABLE idempotency_keys (
    caller          text        NOT NULL,
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    text        NOT NULL,
    response_status smallint    NOT NULL,
    response_body   jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
COMMENT ON TABLE idempotency_keys IS 'Stored responses of admin POSTs sent with an Idempotency-Key header: the same key and body replays the response.';
COMMENT ON COLUMN idempotency_keys.caller IS 'The token subject that sent the request.';
COMMENT ON COLUMN idempotency_keys.key IS 'The Idempotency-Key header value.';
COMMENT ON COLUMN idempotency_keys.request_hash IS 'SHA-256 of method, path and body; a different request under the same key is refused.';
COMMENT ON COLUMN idempotency_keys.response_status IS 'HTTP status of the stored response.';
COMMENT ON COLUMN idempotency_keys.response_body IS 'JSON body of the stored response.';
COMMENT ON COLUMN idempotency_keys.created_at IS 'When the first request was processed.';
