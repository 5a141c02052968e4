-- Named SQL blocks used by the engine (worker and execution creation).

-- name: claim_steps
SELECT * FROM maestro_claim_steps($1, $2, $3)

-- name: complete_steps
SELECT * FROM maestro_complete_steps($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)

-- name: heartbeat
UPDATE step_runs SET lease_expires_at = now() + make_interval(secs => $3)
 WHERE id = ANY ($2) AND worker_id = $1 AND status = 'running'
RETURNING id

-- name: release_steps
-- Graceful shutdown: give unfinished steps back to the queue at once.
-- The interrupted attempt is given back too: stopping a worker must not burn retries.
UPDATE step_runs
   SET status = CASE WHEN state IS NOT NULL THEN 'waiting' ELSE 'ready' END,
       attempts = CASE WHEN state IS NOT NULL THEN attempts ELSE attempts - 1 END,
       run_at = now(), worker_id = NULL, lease_expires_at = NULL
 WHERE id = ANY ($2) AND worker_id = $1 AND status = 'running'
RETURNING id

-- name: reap_expired_leases
SELECT maestro_reap_expired_leases($1)

-- name: load_version
SELECT definition FROM workflow_versions
 WHERE tenant_id = $1 AND workflow_id = $2 AND version = $3

-- name: load_step_outputs
SELECT step_id, output FROM step_runs
 WHERE tenant_id = $1 AND execution_id = $2 AND status = 'succeeded'

-- name: ensure_tenant
INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING

-- name: claim_idempotency_key
INSERT INTO execution_idempotency_keys (tenant_id, key, request_hash, execution_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING execution_id

-- name: find_idempotency_key
SELECT k.request_hash, k.execution_id, e.status
  FROM execution_idempotency_keys k
  JOIN workflow_executions e ON e.tenant_id = k.tenant_id AND e.id = k.execution_id
 WHERE k.tenant_id = $1 AND k.key = $2

-- name: insert_execution
INSERT INTO workflow_executions (tenant_id, id, workflow_id, workflow_version, trigger, input,
                                 correlation_id, remaining_steps)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)

-- name: insert_step_runs
INSERT INTO step_runs (tenant_id, execution_id, step_id, step_type, status, dependents,
                       pending_needs, is_leaf, max_attempts)
SELECT $1, $2, t.step_id, t.step_type,
       CASE WHEN t.pending_needs = 0 THEN 'ready' ELSE 'pending' END,
       string_to_array(t.dependents, E'\x1f'), t.pending_needs, t.is_leaf, t.max_attempts
  FROM unnest($3::text[], $4::text[], $5::text[], $6::integer[], $7::boolean[], $8::integer[])
       AS t(step_id, step_type, dependents, pending_needs, is_leaf, max_attempts)

-- name: log_execution_event
INSERT INTO workflow_logs (tenant_id, execution_id, level, event, message, data, correlation_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)

-- name: notify_steps
SELECT pg_notify('maestro_steps', '')

-- name: create_execution
SELECT * FROM maestro_create_execution($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
