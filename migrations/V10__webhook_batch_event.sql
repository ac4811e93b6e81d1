-- One event of an apply_webhook_events batch, as a row (sql/07_webhooks.sql).
-- The batch arrives as one JSON array; the function reads it into an array
-- of these once, instead of walking the JSON again in each of its statements.

CREATE TYPE webhook_batch_event AS (
    n            integer,      -- the event's 1-based position in the batch
    provider     text,
    event_id     text,
    event_type   text,
    payload      jsonb,
    action       text,
    reference    text,
    amount_minor bigint,
    currency     text,
    partner_id   bigint,
    object_id    text,
    object_state text,
    occurred_at  timestamptz,
    customer_id  text
);
COMMENT ON TYPE webhook_batch_event IS
    'Engine internals: one event of an apply_webhook_events batch (the arguments of apply_webhook_event) with its position n.';
