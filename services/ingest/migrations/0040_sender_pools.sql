-- Sender pools, sticky senders and throughput per sender (docs/senders.md).
--
-- A pool is an ordered list of a tenant's own senders; a message may name a pool instead of a
-- sender. Ingest picks one of the pool's senders for the recipient and keeps it (sticky): the
-- assignment per tenant, pool and recipient number is stored here, so it holds across every
-- ingest instance and restart. A sender may have a contracted rate the dispatcher holds it to.
ALTER TABLE senders
    ADD COLUMN rate_per_s double precision CHECK (rate_per_s > 0),  -- segments per second; NULL: no limit of its own
    ADD COLUMN burst double precision CHECK (burst >= 1);           -- bucket size; NULL: one second's worth

CREATE TABLE sender_pools (
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id),
    name       text NOT NULL,
    senders    text[] NOT NULL CHECK (array_position(senders, NULL) IS NULL),  -- in order of preference
    geo_match  boolean NOT NULL DEFAULT false,  -- prefer a sender of the recipient's country (US/CA: area code)
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- ingest reads a tenant's pools with its API keys (shared/auth.py), as its senders: a change to
-- a pool drops the tenant's cached keys on every instance.
CREATE TRIGGER sender_pools_notify AFTER INSERT OR UPDATE OR DELETE ON sender_pools
    FOR EACH ROW EXECUTE FUNCTION herald_notify_sender();

CREATE TABLE sender_assignments (
    tenant_id   text NOT NULL,
    pool        text NOT NULL,
    phone_e164  text NOT NULL,   -- the recipient
    sender      text NOT NULL,   -- the pool's sender it gets
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, pool, phone_e164)
);
CREATE INDEX sender_assignments_phone ON sender_assignments (tenant_id, phone_e164);
