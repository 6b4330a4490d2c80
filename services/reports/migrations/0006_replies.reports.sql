-- replaces: 0006_replies.sql
-- ingest (replies): inbound messages (MO) mapped to tenants, keywords, scoped opt-outs.
-- docs/replies.md explains the model.

-- reports' messages: the outbound side of a conversation, read by number.
CREATE INDEX messages_tenant_to ON messages (tenant_id, to_e164, accepted_at DESC);
