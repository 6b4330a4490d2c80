-- replaces: 0021_tenant_disable.sql
CREATE INDEX scheduled_messages_tenant ON scheduled_messages (tenant_id);
