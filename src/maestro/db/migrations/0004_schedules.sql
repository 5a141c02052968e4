-- Cron schedules (DESIGN §5) and the bulk execution creation the schedule runner uses.

CREATE TABLE scheduled_workflows (
    tenant_id               text NOT NULL REFERENCES tenants (id),
    id                      uuid NOT NULL,
    workflow_id             uuid NOT NULL,
    description             text NOT NULL DEFAULT '',
    cron                    text NOT NULL,
    timezone                text NOT NULL,
    enabled                 boolean NOT NULL DEFAULT true,
    -- Why a schedule is paused: set by a person (pause) or by the runner/reconcile when the
    -- workflow was archived, so that the schedule stops instead of failing every tick.
    paused_reason           text,
    input                   jsonb NOT NULL DEFAULT '{}',
    catchup_window_seconds  integer NOT NULL DEFAULT 3600 CHECK (catchup_window_seconds >= 1),
    max_catchup_runs        integer NOT NULL DEFAULT 10 CHECK (max_catchup_runs >= 0),
    overlap_policy          text NOT NULL DEFAULT 'skip'
                            CHECK (overlap_policy IN ('skip', 'allow', 'buffer_one')),
    jitter_seconds          integer NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0),
    -- The nominal time (UTC) of the next tick, computed in the schedule's zone.
    next_run_at             timestamptz,
    -- When a runner should look at this schedule next: next_run_at plus this tick's jitter,
    -- or sooner while a buffered tick waits for the previous run to finish.
    due_at                  timestamptz,
    -- Digest of the cron and zone that next_run_at was computed from; reconcile recomputes
    -- next_run_at when it no longer matches.
    spec_hash               text,
    -- buffer_one: the tick held back until the previous run finishes.
    buffered_for            timestamptz,
    last_scheduled_for      timestamptz,
    last_run_at             timestamptz,
    last_skew_ms            double precision,
    last_execution_id       uuid,
    missed_count            bigint NOT NULL DEFAULT 0,
    skipped_count           bigint NOT NULL DEFAULT 0,
    created_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, workflow_id) REFERENCES workflows (tenant_id, id)
);
-- The runner's claim: enabled schedules by when they are due (all tenants).
CREATE INDEX scheduled_workflows_due ON scheduled_workflows (due_at) WHERE enabled;
CREATE INDEX scheduled_workflows_list ON scheduled_workflows (tenant_id, created_at DESC, id DESC);
CREATE INDEX scheduled_workflows_by_workflow ON scheduled_workflows (tenant_id, workflow_id);

-- Create many executions in one statement (the schedule runner's path). Each has an
-- idempotency key under the primary key of execution_idempotency_keys, so a tick that is
-- enqueued twice (two runners, a retry after a crash, a reconcile) starts one execution.
-- p_templates describes the steps of each workflow version used:
--   [{"tenant", "workflowId", "version",
--     "steps": [{"id", "type", "dependents": [..], "needs", "leaf", "maxAttempts"}]}]
-- Returns one row per request: the execution for its key and whether this call created it.
CREATE FUNCTION maestro_enqueue_executions(
    p_tenants text[],
    p_ids uuid[],
    p_workflow_ids uuid[],
    p_versions integer[],
    p_triggers jsonb[],
    p_inputs jsonb[],
    p_keys text[],
    p_hashes text[],
    p_correlation_ids text[],
    p_templates jsonb
) RETURNS TABLE (idempotency_key text, execution_id uuid, created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH req AS (
        SELECT *
          FROM unnest(p_tenants, p_ids, p_workflow_ids, p_versions, p_triggers, p_inputs,
                      p_keys, p_hashes, p_correlation_ids)
               AS r(tenant_id, id, workflow_id, version, trigger, input, key, hash,
                    correlation_id)
    ), won AS (
        INSERT INTO execution_idempotency_keys AS k (tenant_id, key, request_hash, execution_id)
        SELECT r.tenant_id, r.key, r.hash, r.id FROM req r
        ON CONFLICT DO NOTHING
        RETURNING k.tenant_id, k.key, k.execution_id
    ), tmpl AS (
        SELECT t->>'tenant' AS tenant_id, (t->>'workflowId')::uuid AS workflow_id,
               (t->>'version')::integer AS version, t->'steps' AS steps
          FROM jsonb_array_elements(p_templates) AS t
    ), new_exec AS (
        INSERT INTO workflow_executions AS e (tenant_id, id, workflow_id, workflow_version,
                                              trigger, input, correlation_id, remaining_steps)
        SELECT r.tenant_id, r.id, r.workflow_id, r.version, r.trigger, r.input,
               r.correlation_id, jsonb_array_length(tm.steps)
          FROM req r
          JOIN won w ON w.tenant_id = r.tenant_id AND w.key = r.key
          JOIN tmpl tm ON tm.tenant_id = r.tenant_id AND tm.workflow_id = r.workflow_id
                      AND tm.version = r.version
        RETURNING e.tenant_id, e.id, e.workflow_id, e.workflow_version, e.trigger,
                  e.correlation_id, e.remaining_steps
    ), new_steps AS (
        INSERT INTO step_runs (tenant_id, execution_id, step_id, step_type, status, dependents,
                               pending_needs, is_leaf, max_attempts)
        SELECT ne.tenant_id, ne.id, s.value->>'id', s.value->>'type',
               CASE WHEN (s.value->>'needs')::integer = 0 THEN 'ready' ELSE 'pending' END,
               ARRAY(SELECT jsonb_array_elements_text(s.value->'dependents')),
               (s.value->>'needs')::integer, (s.value->>'leaf')::boolean,
               (s.value->>'maxAttempts')::integer
          FROM new_exec ne
          JOIN tmpl tm ON tm.tenant_id = ne.tenant_id AND tm.workflow_id = ne.workflow_id
                      AND tm.version = ne.workflow_version
          CROSS JOIN LATERAL jsonb_array_elements(tm.steps) WITH ORDINALITY AS s(value, ord)
         ORDER BY ne.id, s.ord
    ), logs AS (
        INSERT INTO workflow_logs (tenant_id, execution_id, level, event, message, data,
                                   correlation_id)
        SELECT ne.tenant_id, ne.id, 'info', 'execution_created',
               format('execution created by %s trigger (workflow version %s, %s steps)',
                      ne.trigger->>'type', ne.workflow_version, ne.remaining_steps),
               jsonb_build_object('trigger', ne.trigger->>'type'), ne.correlation_id
          FROM new_exec ne
    )
    SELECT r.key, COALESCE(w.execution_id, k.execution_id), w.key IS NOT NULL
      FROM req r
      LEFT JOIN won w ON w.tenant_id = r.tenant_id AND w.key = r.key
      LEFT JOIN execution_idempotency_keys k ON k.tenant_id = r.tenant_id AND k.key = r.key;
    PERFORM pg_notify('maestro_steps', '');
END;
$$;
