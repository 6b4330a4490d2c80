-- replaces: 0027_message_search.sql
-- GET /v1/inbound (ingest): the same for messages received.
CREATE INDEX IF NOT EXISTS inbound_messages_tenant_received ON inbound_messages (tenant_id, received_at DESC, event_id DESC);
