-- Outbound partner webhooks: the outbox is the event log itself.
--
-- Each endpoint (partner_webhook_endpoints, migrations/V8) keeps a cursor,
-- delivered_seq: the last seq of its partner's stream its receiver
-- acknowledged. A node sends the events after the cursor, one at a time, in
-- seq order, and only while it holds the endpoint's lease:
--
--   1. lease_partner_webhooks() takes due endpoints that have an event after
--      their cursor, FOR UPDATE SKIP LOCKED (two nodes never take the same
--      one), gives each a fresh lease token and an expiry, and commits at
--      once: no transaction is open while the node POSTs.
--   2. The node POSTs delivered_seq + 1, then reports with
--      record_partner_webhook_attempt(): the attempt is logged whatever
--      happened, but only the lease's holder moves the cursor (on a 2xx) or
--      the backoff (on anything else). The holder keeps the lease while
--      more events are due; a node that dies loses it when it expires, and
--      the next node resends what was never acknowledged.
--
-- So every event reaches every enabled endpoint at least once, in seq
-- order, and an event acknowledged once is not sent again to that endpoint
-- (unless a node stalls past its lease mid-POST: the lease is three times
-- the POST timeout, and the receiver deduplicates by webhook-id, as the
-- Standard Webhooks specification asks of every receiver).
--
-- Errors: CM002 invalid input (422), CM004 no such partner or endpoint (404).

CREATE OR REPLACE FUNCTION register_partner_webhook(
    p_partner_id bigint,
    p_url        text,
    p_secret     text,
    p_since      bigint DEFAULT NULL)
RETURNS partner_webhook_endpoints
LANGUAGE plpgsql
AS $$
DECLARE
    v_last     bigint;
    v_endpoint partner_webhook_endpoints;
BEGIN
    -- The partner's row lock serialises registrations, so the limit below holds.
    PERFORM 1 FROM partners WHERE id = p_partner_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'partner % does not exist', p_partner_id USING ERRCODE = 'CM004';
    END IF;
    -- The service checks the URL fully (scheme, host, addresses); this is the floor for anyone else.
    IF p_url IS NULL OR p_url !~ '^https?://[^\s/?#@]+([/?#]\S*)?$' OR length(p_url) > 2048 THEN
        RAISE EXCEPTION 'the endpoint URL must be an https:// URL of at most 2048 characters, without user:password'
            USING ERRCODE = 'CM002';
    END IF;
    IF (SELECT count(*) FROM partner_webhook_endpoints WHERE partner_id = p_partner_id AND enabled) >= 10 THEN
        RAISE EXCEPTION 'partner % already has 10 enabled webhook endpoints; disable one first', p_partner_id
            USING ERRCODE = 'CM002';
    END IF;
    v_last := partner_last_seq(p_partner_id);
    IF p_since IS NOT NULL AND (p_since < 0 OR p_since > v_last) THEN
        RAISE EXCEPTION 'since must be from 0 to the partner''s last seq (%)', v_last USING ERRCODE = 'CM002';
    END IF;
    INSERT INTO partner_webhook_endpoints (partner_id, url, delivered_seq)
    VALUES (p_partner_id, p_url, coalesce(p_since, v_last))
    RETURNING * INTO v_endpoint;
    INSERT INTO partner_webhook_secrets (endpoint_id, secret) VALUES (v_endpoint.id, p_secret);
    RETURN v_endpoint;
EXCEPTION
    WHEN check_violation THEN
        -- The secret's format: say so without echoing it.
        RAISE EXCEPTION 'the signing secret must be whsec_ followed by base64 of 24 to 64 bytes'
            USING ERRCODE = 'CM002';
END
$$;
COMMENT ON FUNCTION register_partner_webhook(bigint, text, text, bigint) IS
    'Registers an endpoint for a partner with its signing secret (whsec_ + base64; the service generates it). Delivery starts after p_since (default: the partner''s last seq now, so only new events are sent; 0 sends the whole stream). At most 10 enabled endpoints per partner.';

CREATE OR REPLACE FUNCTION disable_partner_webhook(p_partner_id bigint, p_endpoint_id bigint)
RETURNS partner_webhook_endpoints
LANGUAGE plpgsql
AS $$
DECLARE
    v_endpoint partner_webhook_endpoints;
BEGIN
    UPDATE partner_webhook_endpoints
       SET enabled = false,
           disabled_at = coalesce(disabled_at, now()),
           lease_token = NULL,
           leased_until = NULL
     WHERE id = p_endpoint_id AND partner_id = p_partner_id
    RETURNING * INTO v_endpoint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'partner % has no webhook endpoint %', p_partner_id, p_endpoint_id USING ERRCODE = 'CM004';
    END IF;
    RETURN v_endpoint;
END
$$;
COMMENT ON FUNCTION disable_partner_webhook(bigint, bigint) IS
    'Disables a partner''s endpoint: nothing more is sent to it (a POST in flight is still logged). Idempotent. The endpoint and its delivery log are kept.';

CREATE OR REPLACE FUNCTION lease_partner_webhooks(p_lease interval, p_limit integer)
RETURNS TABLE (endpoint_id bigint, partner_id bigint, url text, secret text, delivered_seq bigint,
               lease_token uuid, leased_until timestamptz)
LANGUAGE sql
AS $$
    WITH due AS (
        SELECT e.id
          FROM partner_webhook_endpoints e
         WHERE e.enabled
           AND e.next_attempt_at <= now()
           AND (e.leased_until IS NULL OR e.leased_until < now())
           AND partner_last_seq(e.partner_id) > e.delivered_seq
         ORDER BY e.next_attempt_at
         LIMIT greatest(p_limit, 0)
           FOR UPDATE SKIP LOCKED
    ), leased AS (
        UPDATE partner_webhook_endpoints e
           SET lease_token = gen_random_uuid(), leased_until = now() + p_lease
          FROM due
         WHERE e.id = due.id
        RETURNING e.*
    )
    SELECT l.id, l.partner_id, l.url, s.secret, l.delivered_seq, l.lease_token, l.leased_until
      FROM leased l
      JOIN partner_webhook_secrets s ON s.endpoint_id = l.id
$$;
COMMENT ON FUNCTION lease_partner_webhooks(interval, integer) IS
    'The sender''s poll: leases up to p_limit enabled endpoints that are due, not leased (or whose lease expired), and have an event after their cursor, for p_lease, skipping rows another node is leasing. Returns each with its secret (to sign) and a fresh lease token.';

CREATE OR REPLACE FUNCTION record_partner_webhook_attempt(
    p_endpoint_id bigint,
    p_lease_token uuid,
    p_seq         bigint,
    p_status      integer,
    p_error       text,
    p_duration_ms integer,
    p_lease       interval,
    p_retry_base  interval,
    p_retry_cap   interval)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    v_endpoint partner_webhook_endpoints;
    v_position bigint;
    v_ok       boolean := coalesce(p_status BETWEEN 200 AND 299, false);
    v_counted  boolean;
    v_attempt  integer;
    v_delay    interval;
BEGIN
    SELECT * INTO v_endpoint FROM partner_webhook_endpoints WHERE id = p_endpoint_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint %', p_endpoint_id USING ERRCODE = 'CM004';
    END IF;
    SELECT e.position INTO v_position FROM commission_events e
     WHERE e.partner_id = v_endpoint.partner_id AND e.seq = p_seq;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'partner % has no event %', v_endpoint.partner_id, p_seq USING ERRCODE = 'CM004';
    END IF;
    -- Only the lease's holder decides, and only about the event after the cursor.
    v_counted := v_endpoint.lease_token IS NOT DISTINCT FROM p_lease_token
                 AND p_lease_token IS NOT NULL
                 AND p_seq = v_endpoint.delivered_seq + 1;
    v_attempt := 1 + (SELECT count(*) FROM partner_webhook_attempts a
                       WHERE a.endpoint_id = p_endpoint_id AND a.seq = p_seq);
    INSERT INTO partner_webhook_attempts (endpoint_id, partner_id, seq, position, attempt, status, error,
                                          succeeded, counted, duration_ms)
    VALUES (p_endpoint_id, v_endpoint.partner_id, p_seq, v_position, v_attempt, p_status,
            CASE WHEN v_ok THEN NULL ELSE left(coalesce(p_error, format('HTTP %s', p_status)), 500) END,
            v_ok, v_counted, greatest(p_duration_ms, 0));
    IF NOT v_counted THEN
        RETURN false;
    END IF;

    IF v_ok THEN
        UPDATE partner_webhook_endpoints
           SET delivered_seq = p_seq, attempts = 0, next_attempt_at = now(),
               last_status = p_status, last_error = NULL, last_attempt_at = now()
         WHERE id = p_endpoint_id;
        -- More to send: keep the lease (renewed) and go on; caught up: let it go.
        IF v_endpoint.enabled AND partner_last_seq(v_endpoint.partner_id) > p_seq THEN
            UPDATE partner_webhook_endpoints SET leased_until = now() + p_lease WHERE id = p_endpoint_id;
            RETURN true;
        END IF;
        UPDATE partner_webhook_endpoints SET lease_token = NULL, leased_until = NULL WHERE id = p_endpoint_id;
        RETURN false;
    END IF;

    -- Exponential backoff (base, 2 x base, 4 x base, ... up to the cap), with
    -- jitter (half to all of it) so that endpoints failing together do not
    -- come back together.
    v_delay := least(p_retry_cap, p_retry_base * power(2, least(v_endpoint.attempts, 30)));
    v_delay := v_delay * (0.5 + random() / 2);
    UPDATE partner_webhook_endpoints
       SET attempts = attempts + 1, next_attempt_at = now() + v_delay,
           last_status = p_status, last_error = left(coalesce(p_error, format('HTTP %s', p_status)), 500),
           last_attempt_at = now(), lease_token = NULL, leased_until = NULL
     WHERE id = p_endpoint_id;
    RETURN false;
END
$$;
COMMENT ON FUNCTION record_partner_webhook_attempt(bigint, uuid, bigint, integer, text, integer, interval, interval, interval) IS
    'The sender reports one POST of event p_seq: always logged (partner_webhook_attempts). If p_lease_token still holds the lease and p_seq is the event after the cursor: a 2xx moves the cursor, keeps the lease for p_lease more and returns true when another event is due (false, lease released, when caught up); anything else releases the lease and retries after min(cap, base * 2^attempts) with jitter. A lease lost to another node changes nothing and returns false.';

CREATE OR REPLACE FUNCTION release_partner_webhook(p_endpoint_id bigint, p_lease_token uuid)
RETURNS void
LANGUAGE sql
AS $$
    UPDATE partner_webhook_endpoints
       SET lease_token = NULL, leased_until = NULL
     WHERE id = p_endpoint_id AND lease_token = p_lease_token
$$;
COMMENT ON FUNCTION release_partner_webhook(bigint, uuid) IS
    'Gives a lease back early (the sender stops, or could not read the event): another node may send at once instead of after the expiry.';

CREATE OR REPLACE VIEW partner_webhook_deliveries AS
SELECT e.id AS endpoint_id,
       e.partner_id,
       e.url,
       e.enabled,
       e.delivered_seq,
       partner_last_seq(e.partner_id) AS last_seq,
       partner_last_seq(e.partner_id) - e.delivered_seq AS lag,
       e.attempts,
       e.next_attempt_at,
       e.last_status,
       e.last_error,
       e.last_attempt_at,
       coalesce(e.leased_until > now(), false) AS sending,
       e.created_at,
       e.disabled_at
  FROM partner_webhook_endpoints e;
COMMENT ON VIEW partner_webhook_deliveries IS
    'For DBAs and the API: each endpoint''s delivery state. lag = the partner''s last seq - the cursor (events not yet acknowledged); attempts = failures of the current event; sending = a node holds its lease now. SELECT * FROM partner_webhook_deliveries WHERE lag > 0 ORDER BY next_attempt_at.';
