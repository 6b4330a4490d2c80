-- A shared view (docs/data-map.md, "Shared views"; the rule in 0046_shared_views.sql of ingest).
-- reports' messages, for ingest's idempotent replay (status) and reply conversation view.
CREATE VIEW shared_message_statuses AS
SELECT message_id, tenant_id, to_e164, accepted_at, status, type, sender
  FROM messages;
