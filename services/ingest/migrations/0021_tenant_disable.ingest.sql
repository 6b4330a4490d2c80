-- replaces: 0021_tenant_disable.sql
-- Disabling a tenant stops its traffic (docs/operations.md): its active campaigns are
-- cancelled with a reason, and the scheduler wakes its held messages to suppress them.
ALTER TABLE campaigns ADD COLUMN cancel_reason text;  -- why a campaign was cancelled other than by its tenant
