-- The hard parts of the queue live in PL/pgSQL so that each state transition is one
-- round trip and one transaction (CONVENTIONS habit 2).

CREATE TYPE maestro_claimed AS (
    id                bigint,
    tenant_id         text,
    execution_id      uuid,
    step_id           text,
    step_type         text,
    attempts          integer,
    max_attempts      integer,
    state             jsonb,
    workflow_id       uuid,
    workflow_version  integer,
    input             jsonb,
    trigger           jsonb,
    correlation_id    text,
    execution_created_at timestamptz
);

-- Marks the given ready rows (already locked or lockable) as running for p_worker and
-- returns what the worker needs to run them.
CREATE FUNCTION maestro_claim_ids(p_worker text, p_ids bigint[], p_lease_seconds float8)
RETURNS SETOF maestro_claimed LANGUAGE sql AS $$
    WITH claimed AS (
        UPDATE step_runs s
           SET status = 'running',
               attempts = s.attempts + CASE WHEN s.status = 'waiting' THEN 0 ELSE 1 END,
               worker_id = p_worker,
               lease_expires_at = now() + make_interval(secs => p_lease_seconds),
               started_at = CASE WHEN s.status = 'waiting' THEN s.started_at ELSE now() END,
               finished_at = NULL
         WHERE s.id = ANY (p_ids)
           AND s.status IN ('ready', 'failed', 'waiting')
        RETURNING s.id, s.tenant_id, s.execution_id, s.step_id, s.step_type, s.attempts,
                  s.max_attempts, s.state
    ), started AS (
        UPDATE workflow_executions e
           SET status = 'running', started_at = coalesce(e.started_at, now())
          FROM (SELECT DISTINCT tenant_id, execution_id FROM claimed) c
         WHERE e.tenant_id = c.tenant_id AND e.id = c.execution_id
           AND e.status IN ('queued', 'waiting')
        RETURNING e.id
    )
    SELECT c.id, c.tenant_id, c.execution_id, c.step_id, c.step_type, c.attempts,
           c.max_attempts, c.state, e.workflow_id, e.workflow_version, e.input, e.trigger,
           e.correlation_id, e.created_at
      FROM claimed c
      JOIN workflow_executions e ON e.tenant_id = c.tenant_id AND e.id = c.execution_id
$$;

-- Claims up to p_limit due steps, fairly across tenants: a loose index scan finds every
-- tenant with claimable work (cost grows with the number of active tenants, never with the
-- backlog), each tenant gets an equal share of the batch, oldest first, and what the shares
-- leave unused is filled from tenants that have more.
CREATE FUNCTION maestro_claim_steps(p_worker text, p_limit integer, p_lease_seconds float8)
RETURNS SETOF maestro_claimed LANGUAGE plpgsql AS $$
DECLARE
    v_tenants text[];
    v_ids     bigint[];
    v_share   integer;
    v_missing integer;
BEGIN
    WITH RECURSIVE active(tenant_id) AS (
        (SELECT s.tenant_id FROM step_runs s
          WHERE s.status IN ('ready', 'failed', 'waiting') AND s.run_at < 'infinity'
          ORDER BY s.tenant_id LIMIT 1)
        UNION ALL
        SELECT (SELECT s.tenant_id FROM step_runs s
                 WHERE s.status IN ('ready', 'failed', 'waiting') AND s.run_at < 'infinity'
                   AND s.tenant_id > a.tenant_id
                 ORDER BY s.tenant_id LIMIT 1)
          FROM active a WHERE a.tenant_id IS NOT NULL
    )
    SELECT array_agg(tenant_id) INTO v_tenants FROM active WHERE tenant_id IS NOT NULL;
    IF v_tenants IS NULL THEN
        RETURN;
    END IF;

    v_share := greatest(1, ceil(p_limit::numeric / array_length(v_tenants, 1)))::integer;
    SELECT array_agg(c.id) INTO v_ids
      FROM (SELECT c.id
              FROM unnest(v_tenants) AS t(tenant_id)
             CROSS JOIN LATERAL (
                   SELECT s.id FROM step_runs s
                    WHERE s.tenant_id = t.tenant_id
                      AND s.status IN ('ready', 'failed', 'waiting')
                      AND s.run_at < 'infinity' AND s.run_at <= now()
                    ORDER BY s.run_at, s.id
                    LIMIT v_share
                    FOR UPDATE SKIP LOCKED) c
             LIMIT p_limit) c;
    v_ids := coalesce(v_ids, '{}');

    v_missing := p_limit - coalesce(array_length(v_ids, 1), 0);
    IF v_missing > 0 AND array_length(v_tenants, 1) > 1 THEN
        SELECT v_ids || coalesce(array_agg(c.id), '{}') INTO v_ids
          FROM (SELECT c.id
                  FROM unnest(v_tenants) AS t(tenant_id)
                 CROSS JOIN LATERAL (
                       SELECT s.id FROM step_runs s
                        WHERE s.tenant_id = t.tenant_id
                          AND s.status IN ('ready', 'failed', 'waiting')
                          AND s.run_at < 'infinity' AND s.run_at <= now()
                          AND s.id <> ALL (v_ids)
                        ORDER BY s.run_at, s.id
                        LIMIT v_missing
                        FOR UPDATE SKIP LOCKED) c
                 LIMIT v_missing) c;
    END IF;

    IF coalesce(array_length(v_ids, 1), 0) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM maestro_claim_ids(p_worker, v_ids, p_lease_seconds);
END
$$;

-- Fails an execution: the cause is recorded, queued work of the execution is cancelled, open
-- approvals are closed. Steps already running finish, but release nothing.
CREATE FUNCTION maestro_fail_execution(p_tenant text, p_execution uuid, p_error jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_executions
       SET status = 'failed', error = p_error, finished_at = now()
     WHERE tenant_id = p_tenant AND id = p_execution
       AND status IN ('queued', 'running', 'waiting');
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE step_runs
       SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL, worker_id = NULL
     WHERE tenant_id = p_tenant AND execution_id = p_execution
       AND status IN ('ready', 'failed', 'waiting');
    UPDATE human_tasks SET status = 'cancelled', decided_at = now()
     WHERE tenant_id = p_tenant AND execution_id = p_execution AND status = 'open';
    INSERT INTO workflow_logs (tenant_id, execution_id, step_id, level, event, message, data,
                               correlation_id)
    SELECT p_tenant, p_execution, p_error ->> 'stepId', 'error', 'execution_failed',
           'execution failed: step ' || coalesce(p_error ->> 'stepId', '?') || ' '
               || coalesce(p_error ->> 'class', '') || ': ' || coalesce(p_error ->> 'message', ''),
           p_error, e.correlation_id
      FROM workflow_executions e WHERE e.tenant_id = p_tenant AND e.id = p_execution;
    PERFORM pg_notify('maestro_execution_finished', p_execution::text);
END
$$;

-- A step finished as succeeded (p_live) or skipped (not p_live): count it done, release its
-- dependents (cascading skips to steps whose needs were all skipped) and finish the execution
-- when nothing remains. Returns the ids of steps that became ready.
CREATE FUNCTION maestro_finish_step(p_tenant text, p_execution uuid, p_dependents text[],
                                    p_live boolean)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_released  bigint[] := '{}';
    v_done      integer := 1;
    v_frontier  text[] := p_dependents;
    v_live      boolean := p_live;
    v_next      text[];
    r           record;
    v_status    text;
    v_remaining integer;
    v_correlation text;
BEGIN
    -- Bookkeeping runs even when the execution already failed, so that a replay finds every
    -- step's needs counted correctly; only an active execution makes steps ready.
    SELECT status INTO v_status FROM workflow_executions
     WHERE tenant_id = p_tenant AND id = p_execution;
    BEGIN
        WHILE coalesce(array_length(v_frontier, 1), 0) > 0 LOOP
            v_next := '{}';
            FOR r IN
                UPDATE step_runs
                   SET pending_needs = pending_needs - 1,
                       live_needs = live_needs + v_live::integer
                 WHERE tenant_id = p_tenant AND execution_id = p_execution
                   AND step_id = ANY (v_frontier) AND status = 'pending'
                RETURNING id, pending_needs, live_needs, dependents
            LOOP
                IF r.pending_needs = 0 AND r.live_needs > 0 THEN
                    CONTINUE WHEN v_status NOT IN ('queued', 'running', 'waiting');
                    UPDATE step_runs SET status = 'ready', run_at = now() WHERE id = r.id;
                    v_released := v_released || r.id;
                ELSIF r.pending_needs = 0 THEN
                    UPDATE step_runs SET status = 'skipped', finished_at = now() WHERE id = r.id;
                    v_done := v_done + 1;
                    v_next := v_next || r.dependents;
                END IF;
            END LOOP;
            v_frontier := v_next;
            v_live := false;
        END LOOP;
    END;

    UPDATE workflow_executions
       SET remaining_steps = remaining_steps - v_done
     WHERE tenant_id = p_tenant AND id = p_execution
    RETURNING remaining_steps, status INTO v_remaining, v_status;

    IF v_remaining = 0 AND v_status IN ('queued', 'running', 'waiting') THEN
        UPDATE workflow_executions
           SET status = 'succeeded', finished_at = now(),
               output = (SELECT coalesce(jsonb_object_agg(step_id, output), '{}'::jsonb)
                           FROM step_runs
                          WHERE tenant_id = p_tenant AND execution_id = p_execution AND is_leaf)
         WHERE tenant_id = p_tenant AND id = p_execution
        RETURNING correlation_id INTO v_correlation;
        INSERT INTO workflow_logs (tenant_id, execution_id, level, event, message, correlation_id)
        VALUES (p_tenant, p_execution, 'info', 'execution_succeeded', 'execution succeeded',
                v_correlation);
        PERFORM pg_notify('maestro_execution_finished', p_execution::text);
    ELSIF v_status = 'running' AND coalesce(array_length(v_released, 1), 0) = 0 THEN
        -- Only delays or approvals are left: the execution is waiting, not running.
        UPDATE workflow_executions e SET status = 'waiting'
         WHERE e.tenant_id = p_tenant AND e.id = p_execution
           AND EXISTS (SELECT 1 FROM step_runs s
                        WHERE s.tenant_id = p_tenant AND s.execution_id = p_execution
                          AND s.status = 'waiting')
           AND NOT EXISTS (SELECT 1 FROM step_runs s
                            WHERE s.tenant_id = p_tenant AND s.execution_id = p_execution
                              AND s.status IN ('ready', 'running', 'failed'));
    END IF;
    RETURN v_released;
END
$$;

-- Records a batch of step outcomes in one transaction. Outcomes: succeeded, skipped,
-- retry (status failed, run again at run_at), dead (retries exhausted or not retryable),
-- suspend (status waiting until run_at; used by delay and approval).
-- A result counts only while the worker still holds the step's lease for that attempt, so a
-- step that another worker reclaimed is never recorded twice. Up to p_claim_limit of the steps
-- this batch made ready are claimed for the same worker at once (no round trip through
-- NOTIFY for the next step of a chain); the rest are announced with NOTIFY.
CREATE FUNCTION maestro_complete_steps(
    p_worker text, p_ids bigint[], p_attempts integer[], p_outcomes text[],
    p_outputs text[], p_errors text[], p_run_at timestamptz[], p_states text[],
    p_durations_ms float8[], p_input_sha256 text[], p_output_sha256 text[],
    p_claim_limit integer, p_lease_seconds float8)
RETURNS SETOF maestro_claimed LANGUAGE plpgsql AS $$
DECLARE
    o          record;
    r          record;
    v_outcome  text;
    v_output   jsonb;
    v_error    jsonb;
    v_state    jsonb;
    v_exec     text;
    v_released bigint[] := '{}';
    v_status   text;
    v_claim    bigint[];
BEGIN
    -- Iterate over unnest(), not o.id: subscripting a large array parameter inside a
    -- statement copies it each time, which made big batches quadratic.
    FOR o IN
        SELECT * FROM unnest(p_ids, p_attempts, p_outcomes, p_outputs, p_errors, p_run_at,
                             p_states, p_durations_ms, p_input_sha256, p_output_sha256)
               AS t(id, attempt, outcome, output, error, run_at, state, duration_ms,
                    input_sha256, output_sha256)
    LOOP
        -- JSON arrives as text: a driver cannot tell a JSON list from an array dimension.
        v_outcome := o.outcome;
        v_output := o.output::jsonb;
        v_error := o.error::jsonb;
        v_state := o.state::jsonb;
        UPDATE step_runs s
           SET status = CASE v_outcome WHEN 'retry' THEN 'failed'
                                       WHEN 'defer' THEN 'failed'
                                       WHEN 'suspend' THEN 'waiting'
                                       ELSE v_outcome END,
               -- defer: the step could not even be tried (e.g. an open circuit breaker),
               -- so the attempt is not counted.
               attempts = CASE v_outcome WHEN 'defer' THEN s.attempts - 1 ELSE s.attempts END,
               input_sha256 = coalesce(o.input_sha256, s.input_sha256),
               output_sha256 = CASE WHEN v_outcome IN ('succeeded', 'skipped')
                                    THEN o.output_sha256 ELSE s.output_sha256 END,
               output = CASE WHEN v_outcome IN ('succeeded', 'skipped') THEN v_output
                             ELSE s.output END,
               error = v_error,
               state = CASE WHEN v_outcome = 'suspend' THEN v_state - 'humanTask' ELSE s.state END,
               run_at = CASE WHEN v_outcome = 'suspend' THEN coalesce(o.run_at, 'infinity')
                             ELSE coalesce(o.run_at, s.run_at) END,
               finished_at = CASE WHEN v_outcome IN ('succeeded', 'skipped', 'dead') THEN now()
                                  ELSE NULL END,
               lease_expires_at = NULL,
               worker_id = NULL
         WHERE s.id = o.id AND s.status = 'running'
           AND s.worker_id = p_worker AND s.attempts = o.attempt
        RETURNING s.tenant_id, s.execution_id, s.step_id, s.dependents, s.attempts INTO r;
        CONTINUE WHEN NOT FOUND;

        IF v_outcome IN ('retry', 'defer', 'suspend') THEN
            -- The execution may have failed or been cancelled while this step ran:
            -- then it must not come back.
            SELECT e.status INTO v_exec FROM workflow_executions e
             WHERE e.tenant_id = r.tenant_id AND e.id = r.execution_id;
            IF v_exec NOT IN ('queued', 'running', 'waiting') THEN
                UPDATE step_runs SET status = 'cancelled', finished_at = now(), run_at = now()
                 WHERE id = o.id;
                CONTINUE;
            END IF;
        END IF;

        INSERT INTO workflow_logs (tenant_id, execution_id, step_id, level, event, message, data,
                                   correlation_id)
        SELECT r.tenant_id, r.execution_id, r.step_id,
               CASE WHEN v_outcome IN ('retry', 'dead') THEN 'error'
                    WHEN v_outcome = 'defer' THEN 'warning' ELSE 'info' END,
               'step_' || CASE v_outcome WHEN 'retry' THEN 'failed' WHEN 'suspend' THEN 'waiting'
                                          WHEN 'defer' THEN 'deferred' ELSE v_outcome END,
               'step ' || r.step_id || ' attempt ' || r.attempts || ' '
                   || CASE v_outcome WHEN 'retry' THEN 'failed; retry at ' || o.run_at::text
                                     WHEN 'defer' THEN 'deferred (not counted) to '
                                                       || o.run_at::text
                                     WHEN 'suspend' THEN 'is waiting'
                                     ELSE v_outcome END
                   || coalesce(': ' || (v_error ->> 'class') || ': '
                                    || (v_error ->> 'message'), ''),
               jsonb_build_object('attempt', r.attempts, 'durationMs', round(o.duration_ms::numeric, 3)),
               e.correlation_id
          FROM workflow_executions e WHERE e.tenant_id = r.tenant_id AND e.id = r.execution_id;

        IF v_outcome IN ('succeeded', 'skipped') THEN
            v_released := v_released
                || maestro_finish_step(r.tenant_id, r.execution_id, r.dependents,
                                       v_outcome = 'succeeded');
        ELSIF v_outcome = 'dead' THEN
            PERFORM maestro_fail_execution(
                r.tenant_id, r.execution_id,
                jsonb_build_object('stepId', r.step_id) || coalesce(v_error, '{}'::jsonb));
        ELSIF v_outcome = 'suspend' THEN
            IF v_state ? 'humanTask' THEN
                INSERT INTO human_tasks (tenant_id, id, execution_id, step_id, title, description,
                                         assignees)
                VALUES (r.tenant_id, (v_state ->> 'humanTaskId')::uuid, r.execution_id, r.step_id,
                        v_state -> 'humanTask' ->> 'title',
                        v_state -> 'humanTask' ->> 'description',
                        ARRAY(SELECT jsonb_array_elements_text(
                                  coalesce(v_state -> 'humanTask' -> 'assignees', '[]'))))
                ON CONFLICT DO NOTHING;
            END IF;
            UPDATE workflow_executions e SET status = 'waiting'
             WHERE e.tenant_id = r.tenant_id AND e.id = r.execution_id AND e.status = 'running'
               AND NOT EXISTS (SELECT 1 FROM step_runs s
                                WHERE s.tenant_id = r.tenant_id AND s.execution_id = r.execution_id
                                  AND s.status IN ('ready', 'running', 'failed'));
        END IF;
    END LOOP;

    IF coalesce(array_length(v_released, 1), 0) = 0 THEN
        RETURN;
    END IF;
    IF p_claim_limit > 0 THEN
        v_claim := v_released[1:p_claim_limit];
        RETURN QUERY SELECT * FROM maestro_claim_ids(p_worker, v_claim, p_lease_seconds);
    END IF;
    IF coalesce(array_length(v_released, 1), 0) > p_claim_limit THEN
        PERFORM pg_notify('maestro_steps', '');
    END IF;
END
$$;

-- Steps whose worker vanished: their lease expired. Retried at once when attempts remain,
-- otherwise dead. Returns how many were reaped.
CREATE FUNCTION maestro_reap_expired_leases(p_limit integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r       record;
    v_count integer := 0;
    v_error jsonb;
BEGIN
    FOR r IN
        SELECT id, tenant_id, execution_id, step_id, attempts, max_attempts
          FROM step_runs
         WHERE status = 'running' AND lease_expires_at < now()
         ORDER BY lease_expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        v_error := jsonb_build_object(
            'class', 'timeout',
            'message', 'the worker running attempt ' || r.attempts
                       || ' stopped renewing its lease (it crashed or lost the database)');
        IF r.attempts >= r.max_attempts THEN
            UPDATE step_runs SET status = 'dead', error = v_error, finished_at = now(),
                                 lease_expires_at = NULL, worker_id = NULL
             WHERE id = r.id;
            PERFORM maestro_fail_execution(r.tenant_id, r.execution_id,
                                           jsonb_build_object('stepId', r.step_id) || v_error);
        ELSE
            UPDATE step_runs SET status = 'failed', error = v_error, run_at = now(),
                                 lease_expires_at = NULL, worker_id = NULL
             WHERE id = r.id;
        END IF;
        INSERT INTO workflow_logs (tenant_id, execution_id, step_id, level, event, message,
                                   correlation_id)
        SELECT r.tenant_id, r.execution_id, r.step_id, 'warning', 'step_lease_expired',
               v_error ->> 'message', e.correlation_id
          FROM workflow_executions e WHERE e.tenant_id = r.tenant_id AND e.id = r.execution_id;
        v_count := v_count + 1;
    END LOOP;
    IF v_count > 0 THEN
        PERFORM pg_notify('maestro_steps', '');
    END IF;
    RETURN v_count;
END
$$;

-- Re-queues the dead steps of a failed (or cancelled) execution, and the steps cancelled
-- because of them, keeping every succeeded step's output. Returns the number of steps re-queued,
-- or NULL when the execution is not in a state that can be replayed.
CREATE FUNCTION maestro_replay_execution(p_tenant text, p_execution uuid)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE workflow_executions
       SET status = 'queued', finished_at = NULL, error = NULL, output = NULL
     WHERE tenant_id = p_tenant AND id = p_execution AND status IN ('failed', 'cancelled');
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE step_runs
       SET status = CASE WHEN pending_needs = 0 THEN 'ready' ELSE 'pending' END,
           attempts = 0, error = NULL, state = NULL, run_at = now(), finished_at = NULL,
           started_at = NULL
     WHERE tenant_id = p_tenant AND execution_id = p_execution
       AND (status IN ('dead', 'cancelled') OR (status = 'pending' AND pending_needs = 0));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    INSERT INTO workflow_logs (tenant_id, execution_id, level, event, message, correlation_id)
    SELECT p_tenant, p_execution, 'info', 'execution_replayed',
           'execution replayed: ' || v_count || ' step(s) re-queued', e.correlation_id
      FROM workflow_executions e WHERE e.tenant_id = p_tenant AND e.id = p_execution;
    PERFORM pg_notify('maestro_steps', '');
    RETURN v_count;
END
$$;

-- Cancels an execution: queued, waiting and running steps are cancelled (a worker running one
-- notices at its next heartbeat and stops it). Returns false when it had already finished.
CREATE FUNCTION maestro_cancel_execution(p_tenant text, p_execution uuid)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workflow_executions
       SET status = 'cancelled', finished_at = now(),
           error = jsonb_build_object('class', 'cancelled', 'message', 'cancelled by request')
     WHERE tenant_id = p_tenant AND id = p_execution
       AND status IN ('queued', 'running', 'waiting');
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE step_runs
       SET status = 'cancelled', finished_at = now(), lease_expires_at = NULL, worker_id = NULL,
           error = jsonb_build_object('class', 'cancelled', 'message', 'cancelled by request')
     WHERE tenant_id = p_tenant AND execution_id = p_execution
       AND status IN ('pending', 'ready', 'running', 'failed', 'waiting');
    UPDATE human_tasks SET status = 'cancelled', decided_at = now()
     WHERE tenant_id = p_tenant AND execution_id = p_execution AND status = 'open';
    INSERT INTO workflow_logs (tenant_id, execution_id, level, event, message, correlation_id)
    SELECT p_tenant, p_execution, 'info', 'execution_cancelled', 'execution cancelled by request',
           e.correlation_id
      FROM workflow_executions e WHERE e.tenant_id = p_tenant AND e.id = p_execution;
    PERFORM pg_notify('maestro_execution_finished', p_execution::text);
    RETURN true;
END
$$;
