-- Campaigns that keep failing (docs/campaigns.md): every failed attempt to fan a campaign out
-- is counted and backed off; after the last one the campaign ends 'failed' with the reason the
-- tenant sees. ``claimed_at`` orders claims fairly: the tenant claimed longest ago goes first.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_state_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_state_check
    CHECK (state IN ('draft', 'scheduled', 'running', 'testing', 'paused', 'completed', 'cancelled', 'failed'));
ALTER TABLE campaigns ADD COLUMN attempts int NOT NULL DEFAULT 0;       -- failed attempts in a row
ALTER TABLE campaigns ADD COLUMN next_attempt_at timestamptz;          -- not claimed again before this
ALTER TABLE campaigns ADD COLUMN last_error text;                      -- why the last attempt failed
ALTER TABLE campaigns ADD COLUMN failed_at timestamptz;
ALTER TABLE campaigns ADD COLUMN claimed_at timestamptz;               -- the last claim by a launcher
CREATE INDEX campaigns_tenant_claimed ON campaigns (tenant_id, claimed_at);

-- Journeys send without a request of their own: the API key that wrote the current version is
-- kept, and its per-minute message limit applies to the journey's sends (docs/journeys.md).
ALTER TABLE journeys ADD COLUMN key_id text;
