-- Outbound partner webhooks (issue 15, item 4): a partner's HTTPS endpoints,
-- their signing secrets, and the log of every delivery attempt. The
-- functions that write these tables are in sql/09_partner_webhooks.sql.
--
-- The event log (commission_events) is the outbox: an endpoint keeps a
-- cursor (the last seq its receiver acknowledged), and any node may lease
-- the endpoint and send the events after it, one at a time, in seq order.

CREATE TABLE partner_webhook_endpoints (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partner_id      bigint      NOT NULL REFERENCES partners (id),
    url             text        NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    enabled         boolean     NOT NULL DEFAULT true,
    delivered_seq   bigint      NOT NULL CHECK (delivered_seq >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    lease_token     uuid,
    leased_until    timestamptz,
    last_status     integer,
    last_error      text,
    last_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    disabled_at     timestamptz,
    CONSTRAINT partner_webhook_endpoints_lease_whole CHECK ((lease_token IS NULL) = (leased_until IS NULL))
);
CREATE INDEX partner_webhook_endpoints_partner_idx ON partner_webhook_endpoints (partner_id, id);
CREATE INDEX partner_webhook_endpoints_due_idx ON partner_webhook_endpoints (next_attempt_at) WHERE enabled;
COMMENT ON TABLE partner_webhook_endpoints IS 'A partner''s HTTPS endpoints: each receives every event of the partner''s stream after its cursor as a POST signed per Standard Webhooks, in seq order, at least once. Written by sql/09_partner_webhooks.sql only.';
COMMENT ON COLUMN partner_webhook_endpoints.id IS 'Endpoint id (in the REST paths).';
COMMENT ON COLUMN partner_webhook_endpoints.partner_id IS 'The partner whose events the endpoint receives.';
COMMENT ON COLUMN partner_webhook_endpoints.url IS 'Where events are POSTed: https://, or http:// to a loopback address on a node started with PARTNER_WEBHOOKS_ALLOW_HTTP_LOOPBACK. At most 2048 characters, no user:password.';
COMMENT ON COLUMN partner_webhook_endpoints.enabled IS 'False once disabled (DELETE in the API): nothing more is sent. Rows are never deleted, so the delivery log keeps its endpoint.';
COMMENT ON COLUMN partner_webhook_endpoints.delivered_seq IS 'The delivery cursor: the last seq of the partner''s stream the receiver acknowledged with a 2xx. The next event sent is delivered_seq + 1.';
COMMENT ON COLUMN partner_webhook_endpoints.next_attempt_at IS 'Not sent to before this time: now() when caught up, later after a failure (exponential backoff with jitter).';
COMMENT ON COLUMN partner_webhook_endpoints.attempts IS 'Failed attempts of the current event (delivered_seq + 1); 0 after a success.';
COMMENT ON COLUMN partner_webhook_endpoints.lease_token IS 'Set while a node is sending to the endpoint: only the holder of this token may move the cursor. A new lease gets a new token.';
COMMENT ON COLUMN partner_webhook_endpoints.leased_until IS 'When the lease expires: a node that died holding it loses it then, and another node sends.';
COMMENT ON COLUMN partner_webhook_endpoints.last_status IS 'HTTP status of the last attempt; null if it got no response (connection refused, timeout) or none was made yet.';
COMMENT ON COLUMN partner_webhook_endpoints.last_error IS 'Why the last attempt failed (status, or a connection error without the URL); null after a success.';
COMMENT ON COLUMN partner_webhook_endpoints.last_attempt_at IS 'When the last attempt ended.';
COMMENT ON COLUMN partner_webhook_endpoints.created_at IS 'When the endpoint was registered.';
COMMENT ON COLUMN partner_webhook_endpoints.disabled_at IS 'When it was disabled; null while enabled.';

-- Apart from the endpoints so that the read-only role can be kept from it
-- (sql/99_privileges.sql) while it reads everything else.
CREATE TABLE partner_webhook_secrets (
    endpoint_id bigint PRIMARY KEY REFERENCES partner_webhook_endpoints (id),
    secret      text   NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$')
);
COMMENT ON TABLE partner_webhook_secrets IS 'Each endpoint''s signing secret. Readable by commissions_owner and commissions_service (which signs with it), not by commissions_readonly. Shown to the partner once, when the endpoint is registered.';
COMMENT ON COLUMN partner_webhook_secrets.endpoint_id IS 'The endpoint it signs for.';
COMMENT ON COLUMN partner_webhook_secrets.secret IS 'whsec_ + base64 of 32 random bytes: the HMAC-SHA256 key is the base64-decoded part (Standard Webhooks).';

CREATE TABLE partner_webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id  bigint      NOT NULL REFERENCES partner_webhook_endpoints (id),
    partner_id   bigint      NOT NULL REFERENCES partners (id),
    seq          bigint      NOT NULL,
    position     bigint      NOT NULL REFERENCES commission_events (position),
    attempt      integer     NOT NULL CHECK (attempt > 0),
    status       integer,
    error        text,
    succeeded    boolean     NOT NULL,
    counted      boolean     NOT NULL,
    duration_ms  integer     NOT NULL CHECK (duration_ms >= 0),
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX partner_webhook_attempts_endpoint_idx ON partner_webhook_attempts (endpoint_id, id DESC);
COMMENT ON TABLE partner_webhook_attempts IS 'The delivery log: one row per POST a node made to an endpoint, successful or not. Append-only.';
COMMENT ON COLUMN partner_webhook_attempts.id IS 'Attempt id (the keyset cursor of GET .../attempts).';
COMMENT ON COLUMN partner_webhook_attempts.endpoint_id IS 'The endpoint POSTed to.';
COMMENT ON COLUMN partner_webhook_attempts.partner_id IS 'The endpoint''s partner.';
COMMENT ON COLUMN partner_webhook_attempts.seq IS 'The event''s seq in the partner''s stream.';
COMMENT ON COLUMN partner_webhook_attempts.position IS 'The event''s global position; its webhook-id is evt_<position>.';
COMMENT ON COLUMN partner_webhook_attempts.attempt IS 'Which attempt of this event it was for the endpoint: 1, 2, ...';
COMMENT ON COLUMN partner_webhook_attempts.status IS 'The HTTP status the receiver answered; null if it did not answer (refused, reset, timed out).';
COMMENT ON COLUMN partner_webhook_attempts.error IS 'Why it failed; null on success.';
COMMENT ON COLUMN partner_webhook_attempts.succeeded IS 'The receiver answered 2xx.';
COMMENT ON COLUMN partner_webhook_attempts.counted IS 'The sender still held the endpoint''s lease when it reported, so the result moved the cursor or the backoff. False: the lease had passed to another node (the POST happened, but that node decides).';
COMMENT ON COLUMN partner_webhook_attempts.duration_ms IS 'From sending the request to its response or failure, in milliseconds.';
COMMENT ON COLUMN partner_webhook_attempts.attempted_at IS 'When the result was recorded.';
