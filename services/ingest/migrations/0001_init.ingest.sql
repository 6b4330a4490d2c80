-- replaces: 0001_init.sql
-- Herald's first schema. Each table names the service that writes it.

-- ingest (and `herald tenant create`): tenants and their API keys.
CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    secret_hash text NOT NULL,               -- sha256 of the secret part; the key itself is never stored
    scopes      text[] NOT NULL,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- ingest: idempotency keys (API and trigger topic). Same key, same message id.
CREATE TABLE idempotency_keys (
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL,
    message_id      uuid NOT NULL,
    request_hash    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- scheduler reads, ingest API writes: numbers that must never get marketing messages.
CREATE TABLE suppressions (
    tenant_id  text NOT NULL,
    phone_e164 text NOT NULL,
    reason     text NOT NULL,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, phone_e164)
);
