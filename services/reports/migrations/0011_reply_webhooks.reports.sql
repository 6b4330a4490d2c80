-- replaces: 0011_reply_webhooks.sql
-- Reply webhooks: ordinary replies (docs/replies.md) posted, signed, to a tenant's URL.

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
