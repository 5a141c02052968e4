-- Named SQL blocks used by the HTTP API. Every query filters on tenant_id.

-- name: authenticate_api_key
UPDATE api_keys SET last_used_at = now()
 WHERE key_hash = $1 AND revoked_at IS NULL
RETURNING id, tenant_id, roles

-- name: insert_api_key
INSERT INTO api_keys (tenant_id, id, name, key_hash, roles, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, name, roles, created_at, last_used_at, revoked_at

-- name: list_api_keys
SELECT id, name, roles, created_at, last_used_at, revoked_at
  FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = now()
 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL
RETURNING id

-- name: insert_workflow
INSERT INTO workflows (tenant_id, id, name, description, draft, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *

-- name: get_workflow
SELECT * FROM workflows WHERE tenant_id = $1 AND id = $2

-- name: get_workflow_for_update
SELECT * FROM workflows WHERE tenant_id = $1 AND id = $2 FOR UPDATE

-- name: list_workflows
SELECT * FROM workflows
 WHERE tenant_id = $1
   AND ($2::text IS NULL OR status = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
 ORDER BY created_at DESC, id DESC
 LIMIT $5

-- name: update_draft
UPDATE workflows SET name = $3, description = $4, draft = $5, updated_at = now()
 WHERE tenant_id = $1 AND id = $2
RETURNING *

-- name: list_versions
SELECT version, published_at, published_by FROM workflow_versions
 WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY version

-- name: get_version
SELECT version, definition, published_at FROM workflow_versions
 WHERE tenant_id = $1 AND workflow_id = $2 AND version = $3

-- name: insert_version
INSERT INTO workflow_versions (tenant_id, workflow_id, version, definition, published_by)
VALUES ($1, $2, $3, $4, $5)
RETURNING version, published_at

-- name: set_latest_version
UPDATE workflows SET latest_version = $3, updated_at = now()
 WHERE tenant_id = $1 AND id = $2
RETURNING *

-- name: archive_workflow
UPDATE workflows SET status = 'archived', updated_at = now()
 WHERE tenant_id = $1 AND id = $2
RETURNING *

-- name: get_execution
SELECT * FROM workflow_executions WHERE tenant_id = $1 AND id = $2

-- name: get_execution_steps
SELECT id, step_id, step_type, status, attempts, max_attempts, run_at, started_at, finished_at,
       output, error, input_sha256, output_sha256
  FROM step_runs WHERE tenant_id = $1 AND execution_id = $2 ORDER BY id

-- name: list_executions
SELECT * FROM workflow_executions
 WHERE tenant_id = $1
   AND ($2::uuid IS NULL OR workflow_id = $2)
   AND ($3::text[] IS NULL OR status = ANY ($3))
   AND ($4::timestamptz IS NULL OR created_at >= $4)
   AND ($5::timestamptz IS NULL OR created_at < $5)
   AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
 ORDER BY created_at DESC, id DESC
 LIMIT $8

-- name: cancel_execution
SELECT maestro_cancel_execution($1, $2)

-- name: replay_execution
SELECT maestro_replay_execution($1, $2)

-- name: list_logs
SELECT id, step_id, level, event, message, data, correlation_id, created_at
  FROM workflow_logs
 WHERE tenant_id = $1 AND execution_id = $2 AND id > $3
 ORDER BY id
 LIMIT $4

-- name: list_dead_steps
SELECT s.id, s.execution_id, s.step_id, s.step_type, s.attempts, s.error, s.finished_at,
       e.workflow_id, e.workflow_version
  FROM step_runs s
  JOIN workflow_executions e ON e.tenant_id = s.tenant_id AND e.id = s.execution_id
 WHERE s.tenant_id = $1 AND s.status = 'dead'
   AND ($2::timestamptz IS NULL OR (s.finished_at, s.id) < ($2, $3::bigint))
 ORDER BY s.finished_at DESC, s.id DESC
 LIMIT $4

-- name: get_dead_step
SELECT id, execution_id FROM step_runs WHERE tenant_id = $1 AND id = $2 AND status = 'dead'

-- name: list_human_tasks
SELECT * FROM human_tasks
 WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
   AND ($3::uuid IS NULL OR execution_id = $3)
 ORDER BY created_at, id
 LIMIT $4

-- name: get_human_task
SELECT * FROM human_tasks WHERE tenant_id = $1 AND id = $2

-- name: decide_human_task
UPDATE human_tasks
   SET status = $3, decision_by = $4, comment = $5, decided_at = now()
 WHERE tenant_id = $1 AND id = $2 AND status = 'open'
RETURNING *

-- name: wake_approval_step
UPDATE step_runs
   SET state = coalesce(state, '{}'::jsonb) || $4::jsonb, run_at = now()
 WHERE tenant_id = $1 AND execution_id = $2 AND step_id = $3 AND status = 'waiting'
RETURNING id

-- name: insert_audit
INSERT INTO audit_log (tenant_id, actor, action, resource_type, resource_id, details, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)

-- name: pending_migration_count
SELECT count(*) FROM schema_migrations

-- name: insert_connection
INSERT INTO connections (tenant_id, name, type, description, config, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING *

-- name: list_connections
SELECT * FROM connections WHERE tenant_id = $1 ORDER BY name

-- name: get_connection
SELECT * FROM connections WHERE tenant_id = $1 AND name = $2

-- name: update_connection
UPDATE connections SET type = $3, description = $4, config = $5, updated_at = now()
 WHERE tenant_id = $1 AND name = $2
RETURNING *

-- name: delete_connection
DELETE FROM connections WHERE tenant_id = $1 AND name = $2 RETURNING name

-- name: insert_audit_many
INSERT INTO audit_log (tenant_id, actor, action, resource_type, resource_id, details, request_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                     $7::text[])

-- name: workflow_status
SELECT id, status, latest_version FROM workflows WHERE tenant_id = $1 AND id = $2
