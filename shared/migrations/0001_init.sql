-- Herald's first schema. Each table names the service that writes it.

-- ingest (and `herald tenant create`): tenants and their API keys.
CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id),
    secret_hash text NOT NULL,               -- sha256 of the secret part; the key itself is never stored
    scopes      text[] NOT NULL,
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- ingest: idempotency keys (API and trigger topic). Same key, same message id.
CREATE TABLE idempotency_keys (
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL,
    message_id      uuid NOT NULL,
    request_hash    text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- scheduler reads, ingest API writes: numbers that must never get marketing messages.
CREATE TABLE suppressions (
    tenant_id  text NOT NULL,
    phone_e164 text NOT NULL,
    reason     text NOT NULL,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, phone_e164)
);

-- dispatcher: one row per message it has claimed, so no message is submitted twice.
CREATE TABLE dispatch_claims (
    message_id         uuid PRIMARY KEY,
    tenant_id          text NOT NULL,
    state              text NOT NULL CHECK (state IN ('claimed', 'submitted', 'failed', 'expired')),
    owner              text NOT NULL,
    lease_until        timestamptz NOT NULL,
    gateway            text,
    gateway_message_id text,
    attempts           integer NOT NULL DEFAULT 0,
    reason_code        text,
    reason             text,
    gateway_part_ids   text[],
    outbound           jsonb NOT NULL,            -- the outbound event, to resolve a stale claim
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dispatch_claims_stale ON dispatch_claims (lease_until) WHERE state = 'claimed';

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
