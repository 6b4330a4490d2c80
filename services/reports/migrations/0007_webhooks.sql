-- reports: status webhooks to customers (docs/webhooks.md).

-- One signing secret per tenant, created on first use by reports' webhook worker
-- (or `python -m services.reports.webhooks secret TENANT`). Kept in clear: it signs.
CREATE TABLE webhook_secrets (
    tenant_id  text PRIMARY KEY,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: one row per status change of a message with a status_callback_url,
-- written in the same transaction as the change. Workers claim due rows with
-- FOR UPDATE SKIP LOCKED, one row per message at a time (the lowest pending seq), so a
-- message's callbacks are posted in order. A claim moves next_attempt_at one lease ahead:
-- a worker that dies mid-post leaves the row due again after the lease.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    message_id      uuid NOT NULL,
    seq             integer NOT NULL,
    tenant_id       text NOT NULL,
    event_id        uuid NOT NULL UNIQUE,
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,                  -- HTTP status of the last attempt, if any
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,               -- delivered or dead-lettered
    UNIQUE (message_id, seq)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_outbox_pending_seq ON webhook_outbox (message_id, seq) WHERE state = 'pending';
CREATE INDEX webhook_outbox_finished ON webhook_outbox (finished_at) WHERE state = 'delivered';
