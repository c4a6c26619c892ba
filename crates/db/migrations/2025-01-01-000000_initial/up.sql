-- Portable SQL: runs unchanged on PostgreSQL and SQLite. Ids are TEXT, timestamps are BIGINT
-- microseconds since the Unix epoch, JSON and binary data are TEXT (JSON / base64).

CREATE TABLE tenants (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NULL,
    revoked_at BIGINT NULL
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE captures (
    episode_id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    idempotency_key TEXT NULL,
    request_hash TEXT NOT NULL,
    accepted_at BIGINT NOT NULL,
    CONSTRAINT captures_tenant_idempotency_key UNIQUE (tenant_id, idempotency_key)
);

CREATE TABLE episodes (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NOT NULL,
    vector_id BIGINT NOT NULL UNIQUE,
    document TEXT NOT NULL,
    error_class TEXT NOT NULL,
    screenshot_format TEXT NULL,
    screenshot TEXT NULL,
    text_embedding TEXT NOT NULL,
    text_model TEXT NOT NULL,
    image_embedding TEXT NULL,
    image_model TEXT NULL,
    image_status TEXT NOT NULL,
    redactions TEXT NOT NULL,
    captured_at BIGINT NOT NULL,
    stored_at BIGINT NOT NULL
);

CREATE INDEX episodes_tenant_captured_idx ON episodes (tenant_id, captured_at);
