-- Retention (docs/operations.md, "Retention"; docs/data-map.md, "kept").
--
-- tenants.retention: a tenant's own retention per data kind, in days, over the defaults of the
-- services' settings, e.g. {"messages": 90, "inbound": 30}. Kinds: messages (status, timeline,
-- webhook rows), inbound, clicks (clicks and conversions). Set with `herald tenant policy
-- --retention KIND=DAYS`; read by the service that prunes the kind.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS retention jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(retention) = 'object');

-- One row per retention job (service): a lease, so any instance may run it but only one at a
-- time and once per period, and what the last successful run did (read by every instance for
-- herald_retention_last_success_timestamp_seconds).
CREATE TABLE IF NOT EXISTS retention_runs (
    job             text PRIMARY KEY,
    owner           text,
    lease_until     timestamptz,
    started_at      timestamptz,
    last_success_at timestamptz,
    last_duration_s double precision,
    last_counts     jsonb NOT NULL DEFAULT '{}'
);

-- What the jobs delete by age, each an index range scan in bounded batches.
CREATE INDEX IF NOT EXISTS messages_placeholder_updated ON messages (updated_at) WHERE accepted_at IS NULL;
CREATE INDEX IF NOT EXISTS gateway_refs_submitted ON gateway_refs (submitted_at);
CREATE INDEX IF NOT EXISTS clicks_clicked_at ON clicks (clicked_at);
CREATE INDEX IF NOT EXISTS conversions_occurred_at ON conversions (occurred_at);
CREATE INDEX IF NOT EXISTS inbound_messages_received ON inbound_messages (received_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_dead ON webhook_outbox (finished_at) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS dispatch_claims_final ON dispatch_claims (updated_at)
    WHERE state IN ('submitted', 'failed', 'expired');
-- Finished claims whose text is still there (the dispatcher redacts it after a grace period).
CREATE INDEX IF NOT EXISTS dispatch_claims_unredacted ON dispatch_claims (updated_at)
    WHERE state IN ('submitted', 'failed', 'expired') AND NOT outbound ? 'body_redacted';
