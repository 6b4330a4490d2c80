-- replaces: 0008_campaigns.sql
-- Campaigns (ingest writes; scheduler and dispatcher read the state), tenant sending
-- policy (consent mode, frequency caps) and the scheduler's record of marketing releases
-- that frequency caps count. docs/campaigns.md explains the model.

-- scheduler: marketing messages released, per number, for frequency caps. Rows older than
-- the longest cap window are deleted by the timer.
CREATE TABLE marketing_releases (
    tenant_id   text NOT NULL,
    phone_e164  text NOT NULL,
    message_id  uuid NOT NULL,
    released_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, phone_e164, message_id)
);
CREATE INDEX marketing_releases_time ON marketing_releases (released_at);

-- scheduler: which held messages belong to a campaign, so a resume or cancel re-decides
-- them at once.
ALTER TABLE scheduled_messages ADD COLUMN campaign_id uuid;
CREATE INDEX scheduled_messages_campaign ON scheduled_messages (campaign_id, reason_code) WHERE campaign_id IS NOT NULL;
