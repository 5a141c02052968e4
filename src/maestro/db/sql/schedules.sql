-- Named SQL blocks for schedules: the API, the runner and reconcile.

-- name: insert_schedule
INSERT INTO scheduled_workflows (tenant_id, id, workflow_id, description, cron, timezone,
                                 enabled, paused_reason, input, catchup_window_seconds,
                                 max_catchup_runs, overlap_policy, jitter_seconds, next_run_at,
                                 due_at, spec_hash, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
RETURNING *

-- name: get_schedule
SELECT * FROM scheduled_workflows WHERE tenant_id = $1 AND id = $2

-- name: lock_schedule
SELECT s.*, w.status AS workflow_status, w.latest_version
  FROM scheduled_workflows s
  JOIN workflows w ON w.tenant_id = s.tenant_id AND w.id = s.workflow_id
 WHERE s.tenant_id = $1 AND s.id = $2
   FOR UPDATE OF s

-- name: list_schedules
SELECT * FROM scheduled_workflows
 WHERE tenant_id = $1
   AND ($2::uuid IS NULL OR workflow_id = $2)
   AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
 ORDER BY created_at DESC, id DESC
 LIMIT $5

-- name: update_schedule
-- The whole user-settable state at once; the caller computed next_run_at for it.
UPDATE scheduled_workflows
   SET description = $3, cron = $4, timezone = $5, enabled = $6, paused_reason = $7,
       input = $8, catchup_window_seconds = $9, max_catchup_runs = $10, overlap_policy = $11,
       jitter_seconds = $12, next_run_at = $13, due_at = $14, spec_hash = $15,
       buffered_for = $16, updated_at = now()
 WHERE tenant_id = $1 AND id = $2
RETURNING *

-- name: delete_schedule
DELETE FROM scheduled_workflows WHERE tenant_id = $1 AND id = $2 RETURNING id

-- name: notify_schedules
SELECT pg_notify('maestro_schedules', '')

-- name: claim_due_schedules
-- Due schedules of every tenant, locked for this transaction; another runner skips them.
SELECT s.*, w.status AS workflow_status, w.latest_version, e.status AS last_status
  FROM scheduled_workflows s
  JOIN workflows w ON w.tenant_id = s.tenant_id AND w.id = s.workflow_id
  LEFT JOIN workflow_executions e ON e.tenant_id = s.tenant_id AND e.id = s.last_execution_id
 WHERE s.enabled AND s.due_at <= $1
 ORDER BY s.due_at
 LIMIT $2
   FOR UPDATE OF s SKIP LOCKED

-- name: reconcile_batch
-- Every schedule (of one tenant, or all when $1 is NULL) in key order, a batch at a time.
SELECT s.*, w.status AS workflow_status, w.latest_version, e.status AS last_status
  FROM scheduled_workflows s
  JOIN workflows w ON w.tenant_id = s.tenant_id AND w.id = s.workflow_id
  LEFT JOIN workflow_executions e ON e.tenant_id = s.tenant_id AND e.id = s.last_execution_id
 WHERE ($1::text IS NULL OR s.tenant_id = $1)
   AND ($2::text IS NULL OR (s.tenant_id, s.id) > ($2, $3::uuid))
 ORDER BY s.tenant_id, s.id
 LIMIT $4
   FOR UPDATE OF s SKIP LOCKED

-- name: enqueue_executions
SELECT * FROM maestro_enqueue_executions($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)

-- name: save_schedule_runs
-- The runner's bookkeeping after a pass, for many schedules at once.
UPDATE scheduled_workflows s
   SET next_run_at = u.next_run_at,
       due_at = u.due_at,
       spec_hash = u.spec_hash,
       buffered_for = u.buffered_for,
       enabled = u.enabled,
       paused_reason = u.paused_reason,
       last_scheduled_for = COALESCE(u.last_scheduled_for, s.last_scheduled_for),
       last_run_at = COALESCE(u.last_run_at, s.last_run_at),
       last_skew_ms = COALESCE(u.last_skew_ms, s.last_skew_ms),
       last_execution_id = COALESCE(u.last_execution_id, s.last_execution_id),
       missed_count = s.missed_count + u.missed,
       skipped_count = s.skipped_count + u.skipped
  FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::timestamptz[], $5::text[],
              $6::timestamptz[], $7::boolean[], $8::text[], $9::timestamptz[],
              $10::timestamptz[], $11::double precision[], $12::uuid[], $13::bigint[],
              $14::bigint[])
       AS u(tenant_id, id, next_run_at, due_at, spec_hash, buffered_for, enabled,
            paused_reason, last_scheduled_for, last_run_at, last_skew_ms, last_execution_id,
            missed, skipped)
 WHERE s.tenant_id = u.tenant_id AND s.id = u.id

-- name: earliest_due_schedule
SELECT min(due_at) FROM scheduled_workflows WHERE enabled
