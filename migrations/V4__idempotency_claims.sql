-- Idempotency keys become claims (issue 13). A request's claim is written
-- and committed in a short transaction of its own before the handler runs,
-- so no connection is held while the handler waits for one; the response is
-- stored when the handler is done. A claim whose response was never stored
-- (the process died after the effect committed) stays in_progress for good:
-- a retry under it is refused (409) and can never repeat the effect.
--
-- Keys are scoped to (caller, method, route template, key); the concrete
-- path and the body are in request_hash, so the same key on
-- /api/payments/5/verify and /api/payments/6/verify is a 422.
--
-- Rows from before this migration were scoped to (caller, key) and keep
-- route '' (no route template is empty): the API still checks them, so a
-- retry across the upgrade replays instead of running again.

ALTER TABLE idempotency_keys
    ADD COLUMN method                text NOT NULL DEFAULT 'POST',
    ADD COLUMN route                 text NOT NULL DEFAULT '',
    ADD COLUMN path                  text,
    ADD COLUMN state                 text NOT NULL DEFAULT 'completed'
        CONSTRAINT idempotency_keys_state_check CHECK (state IN ('in_progress', 'completed')),
    ADD COLUMN response_content_type text,
    ADD COLUMN completed_at          timestamptz,
    ALTER COLUMN response_status DROP NOT NULL,
    ALTER COLUMN response_body DROP NOT NULL;

UPDATE idempotency_keys SET completed_at = created_at;

ALTER TABLE idempotency_keys
    ALTER COLUMN method DROP DEFAULT,
    ALTER COLUMN route DROP DEFAULT,
    ALTER COLUMN state SET DEFAULT 'in_progress',
    ADD CONSTRAINT idempotency_keys_completed_has_response
        CHECK ((state = 'completed') = (response_status IS NOT NULL AND response_body IS NOT NULL AND completed_at IS NOT NULL)),
    DROP CONSTRAINT idempotency_keys_pkey,
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (caller, method, route, key);

-- The legacy lookup, and an operator's search by caller and key.
CREATE INDEX idempotency_keys_caller_key ON idempotency_keys (caller, key);

COMMENT ON TABLE idempotency_keys IS 'Admin POSTs sent with an Idempotency-Key header: a claim (in_progress) committed before the handler runs, then its stored response (completed), which the same key and request replay.';
COMMENT ON COLUMN idempotency_keys.request_hash IS 'SHA-256 of method, concrete path and canonical JSON body; a different request under the same key is refused (422).';
COMMENT ON COLUMN idempotency_keys.response_status IS 'HTTP status of the stored response; NULL while in_progress.';
COMMENT ON COLUMN idempotency_keys.response_body IS 'Body of the stored response (JSON, or a JSON string for any other body); NULL while in_progress.';
COMMENT ON COLUMN idempotency_keys.created_at IS 'When the key was claimed.';
COMMENT ON COLUMN idempotency_keys.method IS 'HTTP method of the request; part of the key''s scope.';
COMMENT ON COLUMN idempotency_keys.route IS 'Matched route template (/api/payments/{id}/verify); part of the key''s scope. Empty for keys stored before V4, which were scoped to (caller, key).';
COMMENT ON COLUMN idempotency_keys.path IS 'Concrete path of the request (/api/payments/5/verify), for operators; it is also in request_hash.';
COMMENT ON COLUMN idempotency_keys.state IS 'in_progress: claimed, the handler is running or died before its response was stored (see idempotency_stuck_claims); completed: the response is stored and replayed.';
COMMENT ON COLUMN idempotency_keys.response_content_type IS 'Content-Type of the stored response.';
COMMENT ON COLUMN idempotency_keys.completed_at IS 'When the response was stored; NULL while in_progress.';

CREATE VIEW idempotency_stuck_claims AS
SELECT caller, method, route, path, key, created_at, now() - created_at AS age
  FROM idempotency_keys
 WHERE state = 'in_progress'
   AND created_at < now() - interval '5 minutes';
COMMENT ON VIEW idempotency_stuck_claims IS
    'Claims in_progress for over 5 minutes (far past the API''s 30 s request deadline): the request died and whether its effect committed is unknown. Retries under the key get 409 until an operator checks the effect (path says where) and, only if it did not happen, calls release_idempotency_claim. Never cleared automatically: that could repeat a payment.';

CREATE FUNCTION release_idempotency_claim(p_caller text, p_method text, p_route text, p_key text)
RETURNS boolean
LANGUAGE sql
AS $$
    WITH released AS (
        DELETE FROM idempotency_keys
         WHERE caller = p_caller AND method = p_method AND route = p_route AND key = p_key
           AND state = 'in_progress'
        RETURNING 1
    )
    SELECT count(*) > 0 FROM released
$$;
COMMENT ON FUNCTION release_idempotency_claim(text, text, text, text) IS
    'Deletes a claim still in_progress, so the client''s next request under the key runs. Call it only after checking that the effect did not happen; true if a claim was deleted. Completed keys are never touched.';
