-- reports: clicks by bots, link previews and prefetchers are counted per link, day and reason
-- instead of stored one row each (a preview fetcher or a scanner can follow a link thousands of
-- times); people's clicks stay rows of `clicks`. ingest already folds a flush's bot clicks of one
-- link, reason and day into one event (link.clicked `count`).
CREATE TABLE bot_clicks (
    message_id   uuid NOT NULL,
    link_index   smallint NOT NULL,
    day          date NOT NULL,              -- of clicked_at, in UTC
    reason       text NOT NULL,              -- head_request, prefetch, no_user_agent, preview_agent, too_fast
    tenant_id    text NOT NULL,
    campaign_id  uuid,
    variant      text,
    journey_id   uuid,
    clicks       bigint NOT NULL,
    last_at      timestamptz NOT NULL,       -- the latest click counted
    PRIMARY KEY (message_id, link_index, day, reason)
);
CREATE INDEX bot_clicks_campaign ON bot_clicks (campaign_id, variant) WHERE campaign_id IS NOT NULL;

-- The last clicks.v1 record counted into bot_clicks, per topic partition, updated in the same
-- transaction as the counters: a record delivered again (at-least-once) is not counted twice.
CREATE TABLE bot_click_offsets (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    last_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);
