-- Signed inbound webhooks (DESIGN §5): endpoints with encrypted secrets, and delivery nonces.

CREATE TABLE workflow_webhooks (
    tenant_id                    text NOT NULL REFERENCES tenants (id),
    id                           uuid NOT NULL,
    workflow_id                  uuid NOT NULL,
    trigger_path                 text NOT NULL
                                 CHECK (trigger_path ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
    description                  text NOT NULL DEFAULT '',
    enabled                      boolean NOT NULL DEFAULT true,
    -- Sources allowed to deliver; empty admits every source.
    ip_allowlist                 cidr[] NOT NULL DEFAULT '{}',
    -- Token bucket per endpoint; NULL means no per-endpoint limit.
    rate_per_second              double precision CHECK (rate_per_second > 0),
    rate_burst                   integer CHECK (rate_burst >= 1),
    tolerance_seconds            integer NOT NULL DEFAULT 300
                                 CHECK (tolerance_seconds BETWEEN 1 AND 3600),
    -- AES-256-GCM ciphertexts (version byte, nonce, ciphertext and tag) of the whsec_ secrets;
    -- the plain secret is shown once, at creation or rotation, and never stored.
    secret_ciphertext            bytea NOT NULL,
    previous_secret_ciphertext   bytea,
    previous_secret_expires_at   timestamptz,
    rotated_at                   timestamptz,
    created_by                   text,
    created_at                   timestamptz NOT NULL DEFAULT now(),
    updated_at                   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, workflow_id) REFERENCES workflows (tenant_id, id),
    CHECK ((rate_per_second IS NULL) = (rate_burst IS NULL)),
    CHECK ((previous_secret_ciphertext IS NULL) = (previous_secret_expires_at IS NULL))
);
-- Inbound deliveries name the workflow and the path, not the tenant (workflow ids are random
-- UUIDs, so the pair is unique across tenants).
CREATE UNIQUE INDEX workflow_webhooks_route ON workflow_webhooks (workflow_id, trigger_path);
CREATE INDEX workflow_webhooks_by_workflow
    ON workflow_webhooks (tenant_id, workflow_id, created_at, id);
-- The retire job: previous secrets whose grace period ends.
CREATE INDEX workflow_webhooks_retiring ON workflow_webhooks (previous_secret_expires_at)
    WHERE previous_secret_expires_at IS NOT NULL;

-- One row per accepted delivery id (the webhook-id header, the Standard Webhooks nonce),
-- kept while a replay of it could still pass the timestamp check.
CREATE TABLE webhook_deliveries (
    tenant_id     text NOT NULL,
    webhook_id    uuid NOT NULL,
    delivery_id   text NOT NULL,
    body_sha256   text NOT NULL,
    execution_id  uuid NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, webhook_id, delivery_id)
);
CREATE INDEX webhook_deliveries_expiry ON webhook_deliveries (expires_at);

-- Create one execution in one round trip: its idempotency key when p_key is not NULL (a key
-- seen before returns the execution it names, created = false), the execution, its step runs (p_steps as in
-- maestro_enqueue_executions), the log line and the NOTIFY. The single-row sibling of
-- maestro_enqueue_executions, about twice as fast for one execution.
CREATE FUNCTION maestro_create_execution(
    p_tenant text, p_id uuid, p_workflow uuid, p_version integer, p_trigger jsonb, p_input jsonb,
    p_key text, p_hash text, p_correlation_id text, p_steps jsonb
) RETURNS TABLE (execution_id uuid, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_won boolean;
BEGIN
    IF p_key IS NOT NULL THEN
        INSERT INTO execution_idempotency_keys AS k (tenant_id, key, request_hash, execution_id)
        VALUES (p_tenant, p_key, p_hash, p_id)
        ON CONFLICT DO NOTHING
        RETURNING true INTO v_won;
    ELSE
        v_won := true;  -- no key: nothing to deduplicate
    END IF;
    IF v_won IS NULL THEN
        RETURN QUERY SELECT k.execution_id, false FROM execution_idempotency_keys k
                      WHERE k.tenant_id = p_tenant AND k.key = p_key;
        RETURN;
    END IF;
    INSERT INTO workflow_executions (tenant_id, id, workflow_id, workflow_version, trigger, input,
                                     correlation_id, remaining_steps)
    VALUES (p_tenant, p_id, p_workflow, p_version, p_trigger, p_input, p_correlation_id,
            jsonb_array_length(p_steps));
    INSERT INTO step_runs (tenant_id, execution_id, step_id, step_type, status, dependents,
                           pending_needs, is_leaf, max_attempts)
    SELECT p_tenant, p_id, s.value->>'id', s.value->>'type',
           CASE WHEN (s.value->>'needs')::integer = 0 THEN 'ready' ELSE 'pending' END,
           ARRAY(SELECT jsonb_array_elements_text(s.value->'dependents')),
           (s.value->>'needs')::integer, (s.value->>'leaf')::boolean,
           (s.value->>'maxAttempts')::integer
      FROM jsonb_array_elements(p_steps) WITH ORDINALITY AS s(value, ord)
     ORDER BY s.ord;
    INSERT INTO workflow_logs (tenant_id, execution_id, level, event, message, data, correlation_id)
    VALUES (p_tenant, p_id, 'info', 'execution_created',
            format('execution created by %s trigger (workflow version %s, %s steps)',
                   p_trigger->>'type', p_version, jsonb_array_length(p_steps)),
            jsonb_build_object('trigger', p_trigger->>'type'), p_correlation_id);
    PERFORM pg_notify('maestro_steps', '');
    RETURN QUERY SELECT p_id, true;
END;
$$;

-- Accept a verified delivery in one round trip: claim its nonce, create its execution (with
-- the idempotency key webhook:{webhook}:{delivery}, which outlives the nonce), write the audit
-- entry. A delivery id seen before returns its first execution and whether the body matched;
-- concurrent deliveries of one id wait on the nonce's unique key, so exactly one creates.
CREATE FUNCTION maestro_accept_webhook(
    p_tenant text,
    p_webhook uuid,
    p_delivery text,
    p_body_sha256 text,
    p_expires_at timestamptz,
    p_execution uuid,
    p_workflow uuid,
    p_version integer,
    p_trigger jsonb,
    p_input jsonb,
    p_correlation_id text,
    p_steps jsonb,
    p_audit_details jsonb
) RETURNS TABLE (execution_id uuid, created boolean, same_body boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_claimed boolean;
    v_found record;
BEGIN
    INSERT INTO webhook_deliveries AS d (tenant_id, webhook_id, delivery_id, body_sha256,
                                         execution_id, expires_at)
    VALUES (p_tenant, p_webhook, p_delivery, p_body_sha256, p_execution, p_expires_at)
    ON CONFLICT DO NOTHING
    RETURNING true INTO v_claimed;
    IF v_claimed IS NULL THEN
        SELECT d.execution_id, d.body_sha256 = p_body_sha256 AS same
          INTO v_found
          FROM webhook_deliveries d
         WHERE d.tenant_id = p_tenant AND d.webhook_id = p_webhook AND d.delivery_id = p_delivery;
        RETURN QUERY SELECT v_found.execution_id, false, v_found.same;
        RETURN;
    END IF;
    SELECT e.execution_id, e.created INTO v_found
      FROM maestro_create_execution(
               p_tenant, p_execution, p_workflow, p_version, p_trigger, p_input,
               'webhook:' || p_webhook || ':' || p_delivery, p_body_sha256, p_correlation_id,
               p_steps) AS e;
    IF NOT v_found.created THEN
        -- The nonce had expired and was purged, but the idempotency key remembers the id.
        UPDATE webhook_deliveries d SET execution_id = v_found.execution_id
         WHERE d.tenant_id = p_tenant AND d.webhook_id = p_webhook
           AND d.delivery_id = p_delivery;
        RETURN QUERY
        SELECT v_found.execution_id, false, k.request_hash = p_body_sha256
          FROM execution_idempotency_keys k
         WHERE k.tenant_id = p_tenant
           AND k.key = 'webhook:' || p_webhook || ':' || p_delivery;
        RETURN;
    END IF;
    INSERT INTO audit_log (tenant_id, actor, action, resource_type, resource_id, details)
    VALUES (p_tenant, 'webhook', 'webhook.delivery_accepted', 'webhook', p_webhook::text,
            p_audit_details || jsonb_build_object('executionId', p_execution));
    RETURN QUERY SELECT p_execution, true, true;
END;
$$;
