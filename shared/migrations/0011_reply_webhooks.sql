-- Reply webhooks: ordinary replies (docs/replies.md) posted, signed, to a tenant's URL.

-- ingest (and `herald admin tenant reply-webhook`): where a tenant's ordinary replies are
-- posted. The replies lane copies it into each reply.forwarded event, so reports never reads
-- this table.
ALTER TABLE tenants ADD COLUMN reply_webhook_url text
    CHECK (reply_webhook_url IS NULL OR (length(reply_webhook_url) <= 2083 AND reply_webhook_url ~* '^https?://'));

-- reports: the status webhook outbox carries replies too. For a reply, message_id is the
-- conversation's ordering key (derived from tenant and handset number), so one handset's
-- replies are posted in order, like one message's status changes.
ALTER TABLE webhook_outbox ADD COLUMN kind text NOT NULL DEFAULT 'status' CHECK (kind IN ('status', 'reply'));

-- reports: the last seq given to each reply conversation. Kept apart from the outbox (whose
-- delivered rows are pruned) so a conversation's seq never starts again at 1; the upsert that
-- takes the next seqs also locks the conversation until the enqueueing transaction commits.
CREATE TABLE webhook_sequences (
    message_id uuid PRIMARY KEY,   -- the ordering key of webhook_outbox
    seq        integer NOT NULL
);
