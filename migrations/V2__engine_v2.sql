-- Engine v2, part 1: partial and cumulative refunds, disputes, provider events
-- parked until they can apply, minor units fixed per payment, and an event
-- log whose order is decided at commit instead of across the transaction.
-- Tables only, as in V1: the rules are in sql/.

-- New ledger entry kinds. A reversal may now be partial and repeated; a
-- dispute holds part of a commission, then releases it, reverses it, or (won
-- after the funds were withdrawn) reinstates what it reversed.
ALTER TYPE commission_kind ADD VALUE IF NOT EXISTS 'reinstated';
ALTER TYPE commission_kind ADD VALUE IF NOT EXISTS 'held';
ALTER TYPE commission_kind ADD VALUE IF NOT EXISTS 'released';
COMMENT ON TYPE commission_kind IS
    'A ledger entry: earned (payment verified), reversed (refund or lost dispute, in part or in full), reinstated (a dispute reversal undone), held / released (an open dispute makes part of a commission unpayable, and its end frees it).';

-- The DBA views read columns that change here; sql/05 recreates them.
-- (Quietly: on a fresh database they do not exist yet.)
SET client_min_messages = warning;
DROP VIEW IF EXISTS commission_audit, commission_ledger, partner_summary;

-- The engine's own writes are disabled for the backfill below: the V1
-- triggers would otherwise re-check rows that are not changing status.
ALTER TABLE payments DISABLE TRIGGER USER;

-- Minor units, fixed when the payment is recorded: an operator changing a
-- currency's minor units later changes no existing payment's arithmetic.
ALTER TABLE payments ADD COLUMN minor_units smallint;
UPDATE payments p SET minor_units = c.minor_units FROM currencies c WHERE c.code = p.currency;
ALTER TABLE payments ALTER COLUMN minor_units SET NOT NULL,
    ADD CONSTRAINT payments_minor_units_range CHECK (minor_units BETWEEN 0 AND 4);
COMMENT ON COLUMN payments.minor_units IS
    'The currency''s minor units when the payment was recorded (set by the engine, never changed). All of this payment''s arithmetic rounds to it.';

-- Refunds are cumulative: the amount refunded so far, 0 up to the amount.
ALTER TABLE payments ADD COLUMN refunded_amount numeric(20, 4) NOT NULL DEFAULT 0;
UPDATE payments SET refunded_amount = amount WHERE status = 'refunded';
ALTER TABLE payments ADD CONSTRAINT payments_refunded_amount_range
    CHECK (refunded_amount >= 0 AND refunded_amount <= amount);
COMMENT ON COLUMN payments.refunded_amount IS
    'Total refunded so far, in major units (0 to amount). It only grows; reaching the amount makes the payment refunded. The commission reversed for refunds is round(commission * refunded_amount / amount).';

ALTER TABLE payments ENABLE TRIGGER USER;

-- Several reversals per payment now; still exactly one earned entry.
ALTER TABLE commissions DROP CONSTRAINT commissions_one_per_payment_and_kind;
CREATE UNIQUE INDEX commissions_one_earned_per_payment ON commissions (payment_id) WHERE kind = 'earned';
CREATE INDEX commissions_payment_idx ON commissions (payment_id, id);
COMMENT ON INDEX commissions_one_earned_per_payment IS 'A payment earns at most one commission.';
-- The append-only guard would refuse the backfill of the two new columns.
ALTER TABLE commissions DISABLE TRIGGER USER;
ALTER TABLE commissions ADD COLUMN reason text
    CONSTRAINT commissions_reason_known CHECK (reason IN ('verified', 'refund', 'dispute'));
UPDATE commissions SET reason = CASE kind WHEN 'earned' THEN 'verified' ELSE 'refund' END;
ALTER TABLE commissions ALTER COLUMN reason SET NOT NULL;
ALTER TABLE commissions ADD COLUMN minor_units smallint;
UPDATE commissions c SET minor_units = p.minor_units FROM payments p WHERE p.id = c.payment_id;
ALTER TABLE commissions ALTER COLUMN minor_units SET NOT NULL;
ALTER TABLE commissions ENABLE TRIGGER USER;
COMMENT ON COLUMN commissions.minor_units IS 'The payment''s minor units: every amount of this entry, and the totals its event carries, are written with them.';
COMMENT ON COLUMN commissions.reason IS 'Why the entry exists: verified (earned), refund, or dispute.';
COMMENT ON TABLE commissions IS
    'Append-only commission ledger: one earned entry per verified payment, then any number of reversed / reinstated / held / released entries as refunds and disputes arrive. Never updated or deleted; balances are sums of it.';
COMMENT ON COLUMN commissions.kind IS 'earned, reversed, reinstated, held or released (see type commission_kind).';
COMMENT ON COLUMN commissions.payment_id IS 'The payment this entry is for. At most one earned entry per payment (commissions_one_earned_per_payment).';

-- Held: the part of pending that an open dispute makes unpayable.
ALTER TABLE partner_balances ADD COLUMN held numeric(20, 4) NOT NULL DEFAULT 0;
COMMENT ON COLUMN partner_balances.held IS 'Part of pending held by open disputes (held - released entries); not payable until the dispute ends.';
COMMENT ON COLUMN partner_balances.reversed IS 'Net reversed: reversed - reinstated ledger entries (refunds and lost disputes).';

-- Disputes (chargebacks), one row per provider dispute, in its latest state.
CREATE TABLE disputes (
    provider    text           NOT NULL CHECK (provider IN ('stripe', 'paystack')),
    dispute_id  text           NOT NULL CHECK (length(dispute_id) BETWEEN 1 AND 255),
    payment_id  bigint         NOT NULL REFERENCES payments (id),
    amount      numeric(20, 4) NOT NULL CONSTRAINT disputes_amount_positive CHECK (amount > 0),
    state       text           NOT NULL CONSTRAINT disputes_state_known CHECK (state IN ('open', 'funds_withdrawn', 'won', 'lost')),
    opened_at   timestamptz    NOT NULL DEFAULT now(),
    updated_at  timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, dispute_id)
);
CREATE INDEX disputes_payment_idx ON disputes (payment_id);
COMMENT ON TABLE disputes IS 'Provider disputes (chargebacks) of payments, each in its latest state. The engine holds, reverses or reinstates the commission from these rows.';
COMMENT ON COLUMN disputes.provider IS 'stripe or paystack.';
COMMENT ON COLUMN disputes.dispute_id IS 'The provider''s dispute id (Stripe dp_..., Paystack dispute id).';
COMMENT ON COLUMN disputes.payment_id IS 'The disputed payment.';
COMMENT ON COLUMN disputes.amount IS 'Disputed amount in major units (at most the payment''s amount).';
COMMENT ON COLUMN disputes.state IS 'open (commission held), funds_withdrawn (reversed, may still be won), won (nothing reversed), lost (reversed). Moves only forward: a late, older event changes nothing.';
COMMENT ON COLUMN disputes.opened_at IS 'When the dispute was first recorded.';
COMMENT ON COLUMN disputes.updated_at IS 'When its state last changed.';

-- What a provider event asks, stored with it, so that an event parked for a
-- payment, partner or currency not yet known can be applied later as sent.
ALTER TABLE webhook_events
    ADD COLUMN action       text,
    ADD COLUMN reference    text,
    ADD COLUMN amount_minor bigint,
    ADD COLUMN currency     text,
    ADD COLUMN partner_id   bigint,
    ADD COLUMN object_id    text,
    ADD COLUMN object_state text,
    ADD COLUMN occurred_at  timestamptz,
    ADD COLUMN parked_reason text,
    ADD COLUMN applied_at   timestamptz;
CREATE INDEX webhook_events_parked_idx ON webhook_events (provider, reference) WHERE outcome = 'parked';
COMMENT ON COLUMN webhook_events.event_id IS 'The provider''s event id (Stripe evt_...; Paystack has none: <event>:<reference>, or <event>:<refund or dispute id>); unique per provider.';
COMMENT ON COLUMN webhook_events.outcome IS 'What the engine did: verified, refunded, dispute_updated, unchanged, parked (see parked_reason), ignored, ...';
COMMENT ON COLUMN webhook_events.action IS 'The event in the engine''s terms: verify, refund_cumulative, refund, dispute, or none.';
COMMENT ON COLUMN webhook_events.reference IS 'The provider''s payment reference the event is about (Stripe payment intent, Paystack transaction reference).';
COMMENT ON COLUMN webhook_events.amount_minor IS 'The event''s amount in minor units: the payment (verify), the refunded total (refund_cumulative), one refund (refund), the disputed amount (dispute).';
COMMENT ON COLUMN webhook_events.currency IS 'The currency as the provider sent it (verify).';
COMMENT ON COLUMN webhook_events.partner_id IS 'The partner from the payment''s metadata (verify).';
COMMENT ON COLUMN webhook_events.object_id IS 'The refund or dispute id the event is about.';
COMMENT ON COLUMN webhook_events.object_state IS 'The dispute state the event reports: open, funds_withdrawn, won or lost.';
COMMENT ON COLUMN webhook_events.occurred_at IS 'When the provider says the event happened; parked events are applied in this order.';
COMMENT ON COLUMN webhook_events.parked_reason IS 'Why the event waited: unknown_payment, payment_not_verified, unknown_partner or unsupported_currency. Kept after it is applied.';
COMMENT ON COLUMN webhook_events.applied_at IS 'When a parked event was finally applied.';

-- Commit order without a lock across the transaction: a partner's stream and
-- the admin position are taken at commit by the publisher (sql/03), from
-- counters only the engine writes, so neither a DBA's open transaction on
-- partners nor a sequence's CACHE setting can disturb them.
CREATE TABLE partner_streams (
    partner_id bigint PRIMARY KEY REFERENCES partners (id),
    last_seq   bigint NOT NULL CHECK (last_seq > 0)
);
INSERT INTO partner_streams (partner_id, last_seq) SELECT id, last_seq FROM partners WHERE last_seq > 0;
COMMENT ON TABLE partner_streams IS 'Each partner''s event counter, bumped by the engine''s publisher at commit: gapless and in commit order. A partner with no event has no row.';
COMMENT ON COLUMN partner_streams.partner_id IS 'The partner.';
COMMENT ON COLUMN partner_streams.last_seq IS 'Sequence number of the partner''s latest event.';

CREATE TABLE event_log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL CHECK (position >= 0)
);
INSERT INTO event_log_head (position) SELECT coalesce(max(position), 0) FROM commission_events;
COMMENT ON TABLE event_log_head IS 'One row: the last global event position. Its row lock, taken by the publisher at commit and held only through it, orders positions by commit.';
COMMENT ON COLUMN event_log_head.singleton IS 'Always true: the table has one row.';
COMMENT ON COLUMN event_log_head.position IS 'The position of the latest event in commission_events.';

ALTER TABLE partners DROP COLUMN last_seq;
DROP SEQUENCE commission_events_position_seq;
COMMENT ON COLUMN commission_events.position IS 'Global cursor for the admin room, taken from event_log_head at commit: in commit order, gapless.';
