-- Named SQL blocks for webhook endpoints: management API, deliveries, maintenance.

-- name: insert_webhook
INSERT INTO workflow_webhooks (tenant_id, id, workflow_id, trigger_path, description, enabled,
                               ip_allowlist, rate_per_second, rate_burst, tolerance_seconds,
                               secret_ciphertext, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7::text[]::cidr[], $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING
RETURNING *

-- name: get_webhook
SELECT * FROM workflow_webhooks WHERE tenant_id = $1 AND id = $2

-- name: lock_webhook
SELECT * FROM workflow_webhooks WHERE tenant_id = $1 AND id = $2 FOR UPDATE

-- name: list_webhooks
SELECT * FROM workflow_webhooks
 WHERE tenant_id = $1 AND workflow_id = $2
 ORDER BY created_at, id

-- name: update_webhook
UPDATE workflow_webhooks
   SET description = $3, enabled = $4, ip_allowlist = $5::text[]::cidr[],
       rate_per_second = $6, rate_burst = $7, tolerance_seconds = $8, updated_at = now()
 WHERE tenant_id = $1 AND id = $2
RETURNING *

-- name: rotate_webhook
-- The current secret becomes the previous one until $5; $3 is the new current one.
UPDATE workflow_webhooks
   SET previous_secret_ciphertext = $4, previous_secret_expires_at = $5,
       secret_ciphertext = $3, rotated_at = $6, updated_at = now()
 WHERE tenant_id = $1 AND id = $2
RETURNING *

-- name: delete_webhook
DELETE FROM workflow_webhooks WHERE tenant_id = $1 AND id = $2 RETURNING id

-- name: route_webhook
-- An inbound delivery's endpoint, with what it needs to start its workflow.
SELECT h.tenant_id, h.id, h.workflow_id, h.enabled, h.ip_allowlist::text[] AS ip_allowlist,
       h.rate_per_second, h.rate_burst, h.tolerance_seconds, h.secret_ciphertext,
       h.previous_secret_ciphertext, h.previous_secret_expires_at,
       w.status AS workflow_status, w.latest_version
  FROM workflow_webhooks h
  JOIN workflows w ON w.tenant_id = h.tenant_id AND w.id = h.workflow_id
 WHERE h.workflow_id = $1 AND h.trigger_path = $2

-- name: accept_webhook
SELECT * FROM maestro_accept_webhook($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)

-- name: retire_previous_secrets
-- Previous secrets whose grace period is over (verification already ignores them).
UPDATE workflow_webhooks
   SET previous_secret_ciphertext = NULL, previous_secret_expires_at = NULL
 WHERE previous_secret_expires_at <= $1
RETURNING tenant_id, id

-- name: purge_expired_deliveries
DELETE FROM webhook_deliveries
 WHERE ctid = ANY (ARRAY(SELECT ctid FROM webhook_deliveries WHERE expires_at <= $1 LIMIT $2))
