-- Fair share of the campaign lanes (docs/operations.md, fair share): the campaign launcher keeps
-- each tenant's campaign messages in the Kafka lanes below a bound, so one tenant's large campaign
-- never queues ahead of another tenant's in the (first in, first out) partitions.
-- campaign_pages: what launchers published, one row per page (the page's accepted_at is shared
-- by all its messages). campaign_lane_progress: the newest accepted_at of a tenant's campaign
-- messages the dispatcher has handled. A tenant's messages in flight are its pages newer than that.
CREATE TABLE IF NOT EXISTS campaign_pages (
    tenant_id   text        NOT NULL,
    accepted_at timestamptz NOT NULL,
    messages    integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS campaign_pages_tenant ON campaign_pages (tenant_id, accepted_at);

CREATE TABLE IF NOT EXISTS campaign_lane_progress (
    tenant_id     text PRIMARY KEY,
    handled_up_to timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
