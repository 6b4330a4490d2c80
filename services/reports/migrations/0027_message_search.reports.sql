-- replaces: 0027_message_search.sql
-- Finding a tenant's messages newest first (GET /v1/messages): keyset pages on
-- (accepted_at, message_id) within a tenant are an index range scan at any depth.
CREATE INDEX IF NOT EXISTS messages_tenant_accepted ON messages (tenant_id, accepted_at DESC, message_id DESC);
