-- Engine foundation: tenants, keys, workflows, executions, the step queue, logs,
-- human tasks, audit and execution idempotency keys.
-- Every tenant-owned table carries tenant_id and its unique keys include it (DESIGN §8).

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    tenant_id     text NOT NULL REFERENCES tenants (id),
    id            uuid NOT NULL,
    name          text NOT NULL,
    key_hash      bytea NOT NULL,
    roles         text[] NOT NULL,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- The lookup by hash happens before the tenant is known.
CREATE UNIQUE INDEX api_keys_hash ON api_keys (key_hash);

CREATE TABLE workflows (
    tenant_id       text NOT NULL REFERENCES tenants (id),
    id              uuid NOT NULL,
    name            text NOT NULL,
    description     text NOT NULL DEFAULT '',
    draft           jsonb NOT NULL,
    latest_version  integer,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX workflows_list ON workflows (tenant_id, created_at DESC, id DESC);

CREATE TABLE workflow_versions (
    tenant_id     text NOT NULL,
    workflow_id   uuid NOT NULL,
    version       integer NOT NULL,
    definition    jsonb NOT NULL,
    published_by  text,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, workflow_id, version),
    FOREIGN KEY (tenant_id, workflow_id) REFERENCES workflows (tenant_id, id)
);

CREATE TABLE workflow_executions (
    tenant_id         text NOT NULL,
    id                uuid NOT NULL,
    workflow_id       uuid NOT NULL,
    workflow_version  integer NOT NULL,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')),
    trigger           jsonb NOT NULL,
    input             jsonb NOT NULL,
    output            jsonb,
    error             jsonb,
    correlation_id    text,
    remaining_steps   integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, workflow_id, workflow_version)
        REFERENCES workflow_versions (tenant_id, workflow_id, version)
);
CREATE INDEX workflow_executions_list ON workflow_executions (tenant_id, created_at DESC, id DESC);
CREATE INDEX workflow_executions_by_workflow
    ON workflow_executions (tenant_id, workflow_id, created_at DESC, id DESC);

-- step_runs is the queue (DESIGN §2). A row is claimable when status is 'ready', 'failed'
-- (waiting for a retry) or 'waiting' (a delay, or an approval once decided) and run_at has passed.
CREATE TABLE step_runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         text NOT NULL,
    execution_id      uuid NOT NULL,
    step_id           text NOT NULL,
    step_type         text NOT NULL,
    status            text NOT NULL
                      CHECK (status IN ('pending', 'ready', 'running', 'waiting', 'succeeded',
                                        'failed', 'dead', 'skipped', 'cancelled')),
    dependents        text[] NOT NULL DEFAULT '{}',
    pending_needs     integer NOT NULL,
    live_needs        integer NOT NULL DEFAULT 0,
    is_leaf           boolean NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL,
    run_at            timestamptz NOT NULL DEFAULT now(),
    lease_expires_at  timestamptz,
    worker_id         text,
    state             jsonb,
    output            jsonb,
    error             jsonb,
    -- Provenance: SHA-256 of the canonical rendered actionConfig (secret references, never
    -- values) and of the canonical output, for the signed manifest.
    input_sha256      text,
    output_sha256     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    UNIQUE (tenant_id, execution_id, step_id),
    FOREIGN KEY (tenant_id, execution_id) REFERENCES workflow_executions (tenant_id, id)
);
-- The claim path: a loose index scan over tenants with claimable work, then the oldest rows
-- of each tenant. Only claimable rows are in this index, so its size is the ready backlog.
-- Approvals wait with run_at = 'infinity' and stay out of it.
CREATE INDEX step_runs_claimable ON step_runs (tenant_id, run_at, id)
    WHERE status IN ('ready', 'failed', 'waiting') AND run_at < 'infinity';
-- The reaper: leases that expired. Deliberately not "WHERE status = 'running'": with that
-- predicate, generic plans for "UPDATE ... WHERE id = $1 AND status = 'running'" chose this
-- index over the primary key and scanned every running step per completed step.
CREATE INDEX step_runs_leases ON step_runs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX step_runs_dead ON step_runs (tenant_id, finished_at DESC, id DESC) WHERE status = 'dead';

CREATE TABLE workflow_logs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL,
    execution_id  uuid NOT NULL,
    step_id       text,
    level         text NOT NULL,
    event         text NOT NULL,
    message       text NOT NULL,
    data          jsonb,
    correlation_id text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflow_logs_execution ON workflow_logs (tenant_id, execution_id, id);
CREATE INDEX workflow_logs_created ON workflow_logs (created_at);

CREATE TABLE human_tasks (
    tenant_id     text NOT NULL,
    id            uuid NOT NULL,
    execution_id  uuid NOT NULL,
    step_id       text NOT NULL,
    title         text NOT NULL,
    description   text,
    assignees     text[] NOT NULL DEFAULT '{}',
    status        text NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'approved', 'rejected', 'cancelled')),
    decision_by   text,
    comment       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    decided_at    timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, execution_id) REFERENCES workflow_executions (tenant_id, id)
);
CREATE INDEX human_tasks_open ON human_tasks (tenant_id, created_at, id) WHERE status = 'open';
CREATE UNIQUE INDEX human_tasks_one_open_per_step
    ON human_tasks (tenant_id, execution_id, step_id) WHERE status = 'open';

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    text NOT NULL,
    actor        text,
    action       text NOT NULL,
    resource_type text NOT NULL,
    resource_id  text,
    details      jsonb,
    request_id   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, created_at DESC);

CREATE TABLE execution_idempotency_keys (
    tenant_id     text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    execution_id  uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
