-- replaces: 0010_results.sql
-- Results: tracked links, clicks, conversions, and what reports needs to count them per
-- campaign and variant (docs/results.md).

-- ingest: one row per tracked link. The code is derived from (message id, link index), so a
-- retried accept writes the same rows again (ON CONFLICT DO NOTHING).
CREATE TABLE links (
    code         text PRIMARY KEY,
    tenant_id    text NOT NULL,
    message_id   uuid NOT NULL,
    link_index   smallint NOT NULL,
    url          text NOT NULL,
    contact_id   uuid,
    campaign_id  uuid,
    variant      text,
    journey_id   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (message_id, link_index)
);
CREATE INDEX links_created ON links (created_at);
