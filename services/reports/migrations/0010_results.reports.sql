-- replaces: 0010_results.sql
-- Results: tracked links, clicks, conversions, and what reports needs to count them per
-- campaign and variant (docs/results.md).

-- reports: who a message was for and what sent it (from message.accepted).
ALTER TABLE messages ADD COLUMN contact_id uuid;
ALTER TABLE messages ADD COLUMN campaign_id uuid;
ALTER TABLE messages ADD COLUMN variant text;
ALTER TABLE messages ADD COLUMN journey_id uuid;
-- reports: a concatenated message's part ids (from the submission) and each part's receipt.
ALTER TABLE messages ADD COLUMN part_ids text[];
ALTER TABLE messages ADD COLUMN part_status jsonb;
CREATE INDEX messages_campaign ON messages (campaign_id, variant) WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_journey ON messages (journey_id) WHERE journey_id IS NOT NULL;
-- conversion attribution looks up a contact's recent messages by number or contact id
CREATE INDEX messages_tenant_phone ON messages (tenant_id, to_e164, accepted_at);
CREATE INDEX messages_tenant_contact ON messages (tenant_id, contact_id, accepted_at) WHERE contact_id IS NOT NULL;

-- reports: every click on a tracked link (clicks.v1), bots and previews flagged with a reason.
CREATE TABLE clicks (
    event_id     uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    code         text NOT NULL,
    message_id   uuid NOT NULL,
    link_index   smallint NOT NULL,
    url          text NOT NULL,
    contact_id   uuid,
    campaign_id  uuid,
    variant      text,
    journey_id   uuid,
    clicked_at   timestamptz NOT NULL,
    bot          boolean NOT NULL,
    bot_reason   text,
    user_agent   text,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clicks_message ON clicks (message_id, clicked_at);
CREATE INDEX clicks_campaign ON clicks (campaign_id, variant) WHERE campaign_id IS NOT NULL;

-- reports: contact events with a value (conversions), attributed to the message that led to
-- them (last clicked, else last delivered, within the attribution window), once per event.
CREATE TABLE conversions (
    tenant_id    text NOT NULL,
    event_id     uuid NOT NULL,
    name         text NOT NULL,
    phone_e164   text NOT NULL,
    contact_id   uuid,
    occurred_at  timestamptz NOT NULL,
    value        numeric(18, 4) NOT NULL,
    currency     text,
    message_id   uuid,                        -- NULL: no message in the window
    campaign_id  uuid,
    variant      text,
    journey_id   uuid,
    attribution  text NOT NULL CHECK (attribution IN ('click', 'delivery', 'none')),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX conversions_campaign ON conversions (campaign_id, variant) WHERE campaign_id IS NOT NULL;
CREATE INDEX conversions_message ON conversions (message_id) WHERE message_id IS NOT NULL;
