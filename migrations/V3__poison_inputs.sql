-- Inputs that can never succeed are recorded, not retried forever: a
-- provider event we cannot read is stored as rejected, with its reason. And
-- no partner total can overflow: balances hold 34 whole digits, far above
-- any sum of payments (each at most 16 digits, numeric(20, 4)).

SET client_min_messages = warning;
-- The DBA views read partner_balances; sql/05 recreates them.
DROP VIEW IF EXISTS commission_audit, commission_ledger, partner_summary, parked_events, payment_refunds_and_disputes;

ALTER TABLE partner_balances
    ALTER COLUMN earned   TYPE numeric(38, 4),
    ALTER COLUMN pending  TYPE numeric(38, 4),
    ALTER COLUMN paid     TYPE numeric(38, 4),
    ALTER COLUMN reversed TYPE numeric(38, 4),
    ALTER COLUMN held     TYPE numeric(38, 4);

ALTER TABLE webhook_events ADD COLUMN rejected_reason text;
COMMENT ON COLUMN webhook_events.rejected_reason IS
    'Why an authenticated event can never apply (outcome rejected): no id, a NUL character, not JSON, an amount out of range. It changed nothing else.';
