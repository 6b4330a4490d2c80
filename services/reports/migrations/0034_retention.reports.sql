-- replaces: 0034_retention.sql
-- What the jobs delete by age, each an index range scan in bounded batches.
CREATE INDEX IF NOT EXISTS messages_placeholder_updated ON messages (updated_at) WHERE accepted_at IS NULL;
CREATE INDEX IF NOT EXISTS gateway_refs_submitted ON gateway_refs (submitted_at);
CREATE INDEX IF NOT EXISTS clicks_clicked_at ON clicks (clicked_at);
CREATE INDEX IF NOT EXISTS conversions_occurred_at ON conversions (occurred_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_dead ON webhook_outbox (finished_at) WHERE state = 'dead';
