-- Kafka input keys (shared/kafka_signing.py): a tenant's producers sign what they publish to the
-- triggers and contact-events topics; ingest accepts an event only for the tenant whose key
-- signed it. The secret is kept to check signatures (like a webhook signing secret).
CREATE TABLE IF NOT EXISTS kafka_input_keys (
    key_id     text PRIMARY KEY,
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id),
    secret     text NOT NULL,
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS kafka_input_keys_tenant ON kafka_input_keys (tenant_id);
