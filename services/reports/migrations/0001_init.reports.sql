-- replaces: 0001_init.sql
-- Herald's first schema. Each table names the service that writes it.

-- reports: the state of every message and its timeline.
CREATE TABLE messages (
    message_id          uuid PRIMARY KEY,
    tenant_id           text NOT NULL,
    to_e164             text,
    country             text,
    type                text,
    sender              text,
    encoding            text,
    segments            integer,
    source              text,
    idempotency_key     text,
    metadata            jsonb,
    status_callback_url text,
    status              text NOT NULL,
    status_rank         smallint NOT NULL,
    reason_code         text,
    reason              text,
    gateway             text,
    gateway_message_id  text,
    accepted_at         timestamptz,
    submitted_at        timestamptz,
    final_at            timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_tenant_status ON messages (tenant_id, status);
CREATE INDEX messages_accepted_at ON messages (accepted_at);

CREATE TABLE message_events (
    event_id    uuid PRIMARY KEY,
    message_id  uuid NOT NULL,
    status      text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX message_events_message ON message_events (message_id, occurred_at);

-- reports: gateway message id → Herald message id, written when a submission is recorded.
CREATE TABLE gateway_refs (
    gateway            text NOT NULL,
    gateway_message_id text NOT NULL,
    message_id         uuid NOT NULL,
    PRIMARY KEY (gateway, gateway_message_id)
);

-- reports: receipts that arrived before their submission was recorded; applied later.
CREATE TABLE pending_receipts (
    event_id           uuid PRIMARY KEY,
    gateway            text NOT NULL,
    gateway_message_id text NOT NULL,
    receipt            jsonb NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_receipts_ref ON pending_receipts (gateway, gateway_message_id);
