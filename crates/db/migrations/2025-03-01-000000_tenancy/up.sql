-- Tenancy: the customer's commercial fields, key scopes, monthly usage and the audit log.
-- Portable SQL (PostgreSQL and SQLite). The customers table keeps its original name,
-- `tenants`: a tenant is the isolation unit, a customer the business view of the same row.

-- Tenants that existed before tiers keep unlimited service until an operator assigns a
-- tier; every new customer is created with an explicit tier.
ALTER TABLE tenants ADD COLUMN contact_email TEXT NULL;
ALTER TABLE tenants ADD COLUMN tier TEXT NOT NULL DEFAULT 'enterprise';
ALTER TABLE tenants ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE tenants ADD COLUMN region TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tenants ADD COLUMN billing_customer_id TEXT NULL;
ALTER TABLE tenants ADD COLUMN billing_subscription_id TEXT NULL;
ALTER TABLE tenants ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;

-- Space-separated scopes ("capture search reflect episodes:read episodes:write account");
-- `*` grants all of them.
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '*';

-- One row per tenant and calendar month (UTC, 'YYYY-MM'). Counters move by atomic
-- conditional updates, so concurrent gateways never admit past a quota.
CREATE TABLE usage_monthly (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    month TEXT NOT NULL,
    episodes_captured BIGINT NOT NULL DEFAULT 0,
    searches BIGINT NOT NULL DEFAULT 0,
    gates BIGINT NOT NULL DEFAULT 0,
    quota_warned BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, month)
);

-- Append-only: the application only ever inserts (and erases a deleted tenant's rows).
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    tenant_id TEXT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    request_id TEXT NULL,
    outcome TEXT NOT NULL,
    details TEXT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX audit_log_tenant_created_idx ON audit_log (tenant_id, created_at);
CREATE INDEX audit_log_created_idx ON audit_log (created_at);
