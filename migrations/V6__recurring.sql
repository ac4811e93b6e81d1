-- Recurring commissions (issue 14): a provider's customer is attributed to a
-- partner by its first attributed payment, and its later payments (a
-- subscription's invoices) earn for that partner for the partner's
-- recurring_months, even without partner metadata. Tables only; the rule is
-- attribute_payment() in sql/07_webhooks.sql.

-- The program's settings: one row. (The lifecycle's settings live here too.)
CREATE TABLE IF NOT EXISTS commission_program (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO commission_program DEFAULT VALUES ON CONFLICT DO NOTHING;
COMMENT ON TABLE commission_program IS 'The commission program''s settings (one row). An operator may UPDATE it.';
COMMENT ON COLUMN commission_program.singleton IS 'Always true: the table has one row.';
ALTER TABLE commission_program ADD COLUMN default_recurring_months integer
    CONSTRAINT commission_program_recurring_months_range CHECK (default_recurring_months BETWEEN 0 AND 1200);
COMMENT ON COLUMN commission_program.default_recurring_months IS
    'recurring_months given to a partner created without one (create_partner): NULL (the default) is lifetime, 0 the first payment only.';

ALTER TABLE partners ADD COLUMN recurring_months integer
    CONSTRAINT partners_recurring_months_range CHECK (recurring_months BETWEEN 0 AND 1200);
COMMENT ON COLUMN partners.recurring_months IS
    'How long an attributed customer''s later payments earn for this partner, in months from its first attributed payment: NULL is for the customer''s lifetime, 0 the first payment only. A change applies to payments recorded afterwards.';

CREATE TABLE customers (
    provider       text        NOT NULL CHECK (provider IN ('stripe', 'paystack')),
    customer_id    text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 255),
    partner_id     bigint      NOT NULL REFERENCES partners (id),
    first_paid_at  timestamptz NOT NULL,
    first_payment_reference text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, customer_id)
);
CREATE INDEX customers_partner_idx ON customers (partner_id);
COMMENT ON TABLE customers IS 'Which partner brought a provider''s customer: written by the customer''s first payment that names a partner (metadata partner_id), never changed afterwards. Later payments of the customer earn for that partner within its recurring_months.';
COMMENT ON COLUMN customers.provider IS 'stripe or paystack.';
COMMENT ON COLUMN customers.customer_id IS 'The provider''s customer id (Stripe cus_..., Paystack customer_code CUS_...).';
COMMENT ON COLUMN customers.partner_id IS 'The partner the customer is attributed to.';
COMMENT ON COLUMN customers.first_paid_at IS 'When the first attributed payment happened (the provider''s event time): the start of the recurring window.';
COMMENT ON COLUMN customers.first_payment_reference IS 'The provider reference of the first attributed payment; NULL while the customer was attributed by an event without a payment of its own (a Stripe invoice without its payment intent), until its first payment arrives.';
COMMENT ON COLUMN customers.created_at IS 'When the mapping was written.';

ALTER TABLE webhook_events ADD COLUMN customer_id text;
COMMENT ON COLUMN webhook_events.customer_id IS 'The provider''s customer the payment belongs to (verify): attributes it through customers when it names no partner.';

ALTER TABLE payments ADD COLUMN customer_id text
    CONSTRAINT payments_customer_id_length CHECK (length(customer_id) BETWEEN 1 AND 255);
COMMENT ON COLUMN payments.customer_id IS 'The provider''s customer who paid, when the provider said (Stripe customer, Paystack customer_code); NULL for manual payments.';
