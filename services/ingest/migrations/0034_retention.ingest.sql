-- replaces: 0034_retention.sql
-- Retention (docs/operations.md, "Retention"; docs/data-map.md, "kept").
--
-- tenants.retention: a tenant's own retention per data kind, in days, over the defaults of the
-- services' settings, e.g. {"messages": 90, "inbound": 30}. Kinds: messages (status, timeline,
-- webhook rows), inbound, clicks (clicks and conversions). Set with `herald tenant policy
-- --retention KIND=DAYS`; read by the service that prunes the kind.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS retention jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(retention) = 'object');
CREATE INDEX IF NOT EXISTS inbound_messages_received ON inbound_messages (received_at);
