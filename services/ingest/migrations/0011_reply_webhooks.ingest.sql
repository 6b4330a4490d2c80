-- replaces: 0011_reply_webhooks.sql
-- Reply webhooks: ordinary replies (docs/replies.md) posted, signed, to a tenant's URL.

-- ingest (and `herald admin tenant reply-webhook`): where a tenant's ordinary replies are
-- posted. The replies lane copies it into each reply.forwarded event, so reports never reads
-- this table.
ALTER TABLE tenants ADD COLUMN reply_webhook_url text
    CHECK (reply_webhook_url IS NULL OR (length(reply_webhook_url) <= 2083 AND reply_webhook_url ~* '^https?://'));
