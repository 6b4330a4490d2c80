-- reports: the webhook claim reads only the head of each ordering key (docs/webhooks.md).
--
-- head: this row may be the lowest pending seq of its key (message id, or a reply's
-- conversation key), so a worker may claim it when due. enqueue() sets it on a key's first
-- pending row; finishing a row (delivered or dead) sets it on the key's next pending row. The
-- claim still checks that no lower pending seq exists, so a head too many (rows that were
-- pending when this column came, dead rows put back by hand) costs one index probe, never the
-- order. The claim index holds due heads only, in claim order: a claim reads about as many
-- index entries as it takes, however many rows wait behind a head that is in flight or
-- backing off.
ALTER TABLE webhook_outbox ADD COLUMN head boolean NOT NULL DEFAULT true;
CREATE INDEX webhook_outbox_head_due ON webhook_outbox (next_attempt_at, id) WHERE state = 'pending' AND head;
DROP INDEX webhook_outbox_due;
