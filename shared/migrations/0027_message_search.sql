-- Finding a tenant's messages newest first (GET /v1/messages): keyset pages on
-- (accepted_at, message_id) within a tenant are an index range scan at any depth.
CREATE INDEX IF NOT EXISTS messages_tenant_accepted ON messages (tenant_id, accepted_at DESC, message_id DESC);
-- GET /v1/inbound (ingest): the same for messages received.
CREATE INDEX IF NOT EXISTS inbound_messages_tenant_received ON inbound_messages (tenant_id, received_at DESC, event_id DESC);
