-- replaces: 0023_erasure.sql
-- Erasure across every store (docs/data-map.md).
--
-- erasure_audit: one row per erasure and service that applied it (ingest in the request; the
-- scheduler, dispatcher and reports from herald.erasures.v1), written in the same transaction as
-- the erasure. No number: the keyed hash, who asked, when, and how many rows of each table were
-- deleted or redacted. The primary key makes a redelivered erasure a no-op.
CREATE TABLE erasure_audit (
    erasure_id   uuid NOT NULL,
    service      text NOT NULL,
    tenant_id    text NOT NULL,
    phone_hash   text NOT NULL,                 -- <key version>:<hex HMAC>, as in suppression_hashes
    requested_by text NOT NULL,                 -- API key id
    requested_at timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    counts       jsonb NOT NULL DEFAULT '{}',   -- {"table": rows deleted or redacted}
    PRIMARY KEY (erasure_id, service)
);
CREATE INDEX erasure_audit_tenant ON erasure_audit (tenant_id, requested_at);

-- suppression_hashes.phone_hash is now '<version>:' || hex(HMAC-SHA256(key, tenant || ':' || E.164))
-- with the key outside the database (HERALD_ERASURE_KEYS, shared/erasure.py). Rows written
-- before (unversioned sha256) cannot be re-keyed without the number; they are still matched.
-- pgcrypto's hmac() lets a segment filter test contacts against the hashes in SQL, with the
-- key passed as a query parameter (never stored). Trusted extension: the owner may create it.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
