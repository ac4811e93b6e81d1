-- The commission lifecycle (issue 14): a commission is pending through its
-- hold period, then approved (payable), then paid out; payouts group a
-- partner's payable balance per currency. Tables only, as in V1: the rules
-- are in sql/08_lifecycle.sql (and the publisher in sql/03).
--
-- The ledger stays append-only. Approval is a new entry (kind approved);
-- every entry records the stage its commission was in when it was written,
-- which says which total it moves. A payout covers ledger entries through
-- payout_items; a failed payout lets go of them.
--
-- (The new enum value cannot be used in the transaction that adds it, so no
-- index or constraint here names it: they test approval_id instead.)

SET client_min_messages = warning;
-- The DBA views read partner_balances and commissions; sql/05 recreates them.
DROP VIEW IF EXISTS commission_audit, commission_ledger, partner_summary;

ALTER TYPE commission_kind ADD VALUE IF NOT EXISTS 'approved';
COMMENT ON TYPE commission_kind IS
    'A ledger entry: earned (payment verified), reversed (refund or lost dispute, in part or in full), reinstated (a dispute reversal undone), held / released (an open dispute makes part of a commission unpayable, and its end frees it), approved (the hold period is over: what is left of the commission becomes payable).';

-- The program's settings (one row, made by V6__recurring.sql).
ALTER TABLE commission_program ADD COLUMN default_hold_days integer NOT NULL DEFAULT 30
    CONSTRAINT commission_program_hold_days_range CHECK (default_hold_days BETWEEN 0 AND 3650);
COMMENT ON COLUMN commission_program.default_hold_days IS 'Days a commission stays pending before it is approved, for partners without their own hold_days (default 30; 0 approves at verification).';

ALTER TABLE partners ADD COLUMN hold_days integer
    CONSTRAINT partners_hold_days_range CHECK (hold_days BETWEEN 0 AND 3650);
COMMENT ON COLUMN partners.hold_days IS 'This partner''s hold period in days, overriding commission_program.default_hold_days; NULL uses the default, 0 approves each commission when its payment is verified. A change applies to the partner''s pending commissions too.';

ALTER TABLE currencies ADD COLUMN payout_minimum numeric(20, 4) NOT NULL DEFAULT 50
    CONSTRAINT currencies_payout_minimum_positive CHECK (payout_minimum > 0);
COMMENT ON COLUMN currencies.payout_minimum IS 'Smallest payable balance, in major units, that create_payouts pays out in this currency (default 50). Set by an operator.';

-- One approval run's entries for one partner and currency: published as one
-- commission.approved event, however many commissions it approves.
CREATE TABLE commission_approvals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id  bigint         NOT NULL REFERENCES partners (id),
    currency    char(3)        NOT NULL REFERENCES currencies (code),
    as_of       timestamptz    NOT NULL,
    commissions integer        NOT NULL CHECK (commissions > 0),
    amount      numeric(38, 4) NOT NULL CHECK (amount > 0),
    created_at  timestamptz    NOT NULL DEFAULT now()
);
CREATE INDEX commission_approvals_partner_idx ON commission_approvals (partner_id, id);
COMMENT ON TABLE commission_approvals IS 'Approval batches: the commissions of one partner and currency approved by one call of approve_due_commissions (or at verification, with a hold of 0 days). Each is one commission.approved event.';
COMMENT ON COLUMN commission_approvals.id IS 'Batch id; the approved ledger entries name it (commissions.approval_id).';
COMMENT ON COLUMN commission_approvals.partner_id IS 'The partner.';
COMMENT ON COLUMN commission_approvals.currency IS 'The currency of every entry in the batch.';
COMMENT ON COLUMN commission_approvals.as_of IS 'The time the approval run was given (p_now): commissions whose hold ended by then were approved.';
COMMENT ON COLUMN commission_approvals.commissions IS 'How many commissions the batch approved.';
COMMENT ON COLUMN commission_approvals.amount IS 'What became payable: the sum of the batch''s approved entries.';
COMMENT ON COLUMN commission_approvals.created_at IS 'When the batch was written.';

ALTER TABLE commissions DISABLE TRIGGER USER;
ALTER TABLE commissions
    ADD COLUMN stage text NOT NULL DEFAULT 'pending'
        CONSTRAINT commissions_stage_known CHECK (stage IN ('pending', 'approved', 'paid')),
    ADD COLUMN approval_id bigint REFERENCES commission_approvals (id);
ALTER TABLE commissions ALTER COLUMN stage DROP DEFAULT;
ALTER TABLE commissions DROP CONSTRAINT commissions_reason_known,
    ADD CONSTRAINT commissions_reason_known CHECK (reason IN ('verified', 'refund', 'dispute', 'hold_ended'));
ALTER TABLE commissions ADD CONSTRAINT commissions_approval_names_its_batch
    CHECK ((approval_id IS NOT NULL) = (kind::text = 'approved'));
ALTER TABLE commissions ENABLE TRIGGER USER;
CREATE UNIQUE INDEX commissions_one_approval_per_payment ON commissions (payment_id) WHERE approval_id IS NOT NULL;
CREATE INDEX commissions_payable_idx ON commissions (partner_id, currency, id) WHERE stage <> 'pending';
COMMENT ON INDEX commissions_one_approval_per_payment IS 'A commission is approved at most once, whoever runs the approval and however many at once.';
COMMENT ON INDEX commissions_payable_idx IS 'The entries that move a payable balance, for create_payouts.';
COMMENT ON COLUMN commissions.stage IS 'The commission''s stage when the entry was written: pending (in its hold period), approved (payable), or paid (its approval is in a payout). It says which total the entry moves: a reversal at stage paid is clawback, netted from the next payout.';
COMMENT ON COLUMN commissions.approval_id IS 'For an approved entry, its approval batch (commission_approvals); NULL for every other kind.';
COMMENT ON COLUMN commissions.reason IS 'Why the entry exists: verified (earned), refund, dispute, or hold_ended (approved).';

ALTER TABLE partner_balances
    ADD COLUMN approved  numeric(38, 4) NOT NULL DEFAULT 0,
    ADD COLUMN balance   numeric(38, 4) NOT NULL DEFAULT 0,
    ADD COLUMN in_payout numeric(38, 4) NOT NULL DEFAULT 0;
COMMENT ON COLUMN partner_balances.pending IS 'Commissions still in their hold period: their earned minus reversed, not yet approved (held included).';
COMMENT ON COLUMN partner_balances.approved IS 'Approved and not yet in a payout: approvals, less what was reversed or held of them since (not counting clawback).';
COMMENT ON COLUMN partner_balances.balance IS 'What the next payout would pay: approved minus clawback (reversals and holds of commissions already in a payout). Negative while more is owed back than is payable.';
COMMENT ON COLUMN partner_balances.in_payout IS 'In payouts created or sent and not yet paid or failed.';
COMMENT ON COLUMN partner_balances.paid IS 'Sum of paid payouts (each one net of the clawback it recovered).';

CREATE TABLE payouts (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id         bigint         NOT NULL REFERENCES partners (id),
    currency           char(3)        NOT NULL REFERENCES currencies (code),
    amount             numeric(38, 4) NOT NULL CONSTRAINT payouts_amount_positive CHECK (amount > 0),
    approved_amount    numeric(38, 4) NOT NULL,
    clawback_amount    numeric(38, 4) NOT NULL,
    minor_units        smallint       NOT NULL CHECK (minor_units BETWEEN 0 AND 4),
    state              text           NOT NULL DEFAULT 'pending'
                       CONSTRAINT payouts_state_known CHECK (state IN ('pending', 'sent', 'paid', 'failed')),
    as_of              timestamptz    NOT NULL,
    provider_reference text           CONSTRAINT payouts_provider_reference_not_blank CHECK (length(btrim(provider_reference)) BETWEEN 1 AND 200),
    failure_reason     text           CONSTRAINT payouts_failure_reason_not_blank CHECK (length(btrim(failure_reason)) BETWEEN 1 AND 500),
    created_at         timestamptz    NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    paid_at            timestamptz,
    failed_at          timestamptz,
    updated_at         timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT payouts_amount_is_net CHECK (amount = approved_amount - clawback_amount),
    CONSTRAINT payouts_paid_has_reference CHECK (state <> 'paid' OR provider_reference IS NOT NULL),
    CONSTRAINT payouts_failed_has_reason CHECK (state <> 'failed' OR failure_reason IS NOT NULL)
);
CREATE INDEX payouts_partner_idx ON payouts (partner_id, id DESC);
CREATE INDEX payouts_state_idx ON payouts (state, id DESC);
COMMENT ON TABLE payouts IS 'Payouts: a partner''s payable balance in one currency, paid in one transfer. pending -> sent -> paid, or -> failed (from pending or sent), which puts the amount back into the balance. Enforced by payouts_check_transition.';
COMMENT ON COLUMN payouts.id IS 'Payout id; the keyset cursor of payout lists.';
COMMENT ON COLUMN payouts.partner_id IS 'The partner paid.';
COMMENT ON COLUMN payouts.currency IS 'The currency paid.';
COMMENT ON COLUMN payouts.amount IS 'What is paid: approved_amount - clawback_amount, at least the currency''s payout_minimum when created.';
COMMENT ON COLUMN payouts.approved_amount IS 'The approved commissions it covers, net of what was reversed or held of them before it was created.';
COMMENT ON COLUMN payouts.clawback_amount IS 'Reversals and holds of commissions paid out earlier, recovered by this payout (less any reinstated or released since).';
COMMENT ON COLUMN payouts.minor_units IS 'The currency''s minor units when the payout was created: its amounts are written with them.';
COMMENT ON COLUMN payouts.state IS 'pending (created), sent (handed to the payout provider), paid (the provider confirmed; final), failed (final; its entries are payable again).';
COMMENT ON COLUMN payouts.as_of IS 'The time create_payouts was given (p_now): it covers entries written by then.';
COMMENT ON COLUMN payouts.provider_reference IS 'The payout provider''s reference for the transfer; required to mark it paid.';
COMMENT ON COLUMN payouts.failure_reason IS 'Why it failed, as the operator recorded it; required to mark it failed.';
COMMENT ON COLUMN payouts.created_at IS 'When it was created.';
COMMENT ON COLUMN payouts.sent_at IS 'When it was marked sent.';
COMMENT ON COLUMN payouts.paid_at IS 'When it was marked paid.';
COMMENT ON COLUMN payouts.failed_at IS 'When it was marked failed.';
COMMENT ON COLUMN payouts.updated_at IS 'When its state last changed.';

CREATE TABLE payout_items (
    payout_id     bigint         NOT NULL REFERENCES payouts (id),
    commission_id bigint         NOT NULL REFERENCES commissions (id),
    amount        numeric(38, 4) NOT NULL,
    live          boolean        NOT NULL DEFAULT true,
    PRIMARY KEY (payout_id, commission_id)
);
CREATE UNIQUE INDEX payout_items_one_live_payout_per_entry ON payout_items (commission_id) WHERE live;
COMMENT ON INDEX payout_items_one_live_payout_per_entry IS 'A ledger entry is in at most one payout that has not failed: nothing is paid twice.';
COMMENT ON TABLE payout_items IS 'The ledger entries a payout covers, with the signed amount each adds to it (approvals +, clawback -).';
COMMENT ON COLUMN payout_items.payout_id IS 'The payout.';
COMMENT ON COLUMN payout_items.commission_id IS 'The ledger entry covered.';
COMMENT ON COLUMN payout_items.amount IS 'What the entry adds to the payout: its amount, negative for a reversal or hold.';
COMMENT ON COLUMN payout_items.live IS 'true while the payout has not failed; a failed payout''s items are let go, so the entries are payable again.';
