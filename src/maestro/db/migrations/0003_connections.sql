-- Named, tenant-scoped provider settings (like Airflow connections or n8n credentials).
-- Secret fields hold references only ({"secretRef": ...}); the API refuses plain values.

CREATE TABLE connections (
    tenant_id    text NOT NULL REFERENCES tenants (id),
    name         text NOT NULL,
    type         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    config       jsonb NOT NULL,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);
