-- replaces: 0006_replies.sql
-- ingest (replies): inbound messages (MO) mapped to tenants, keywords, scoped opt-outs.
-- docs/replies.md explains the model.

-- Which tenant owns a number, short code or sender id. A number belongs to one tenant.
-- scope: optional brand or sender scope (lowercase); a STOP sent to a scoped number, or
-- "STOP <scope>", opts out of that scope only.
CREATE TABLE tenant_numbers (
    number     text PRIMARY KEY,               -- as handsets write to it: +E.164, short code, sender id
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id),
    scope      text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenant_numbers_tenant ON tenant_numbers (tenant_id, scope);

-- Per-tenant keyword additions, stored normalised (accents stripped, uppercase).
CREATE TABLE tenant_keywords (
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id),
    keyword    text NOT NULL,
    grp        text NOT NULL CHECK (grp IN ('stop', 'start', 'help')),
    language   text NOT NULL DEFAULT 'en',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, keyword)
);

-- Opt-outs of one scope (brand / sender). The scheduler suppresses a marketing message to
-- phone_e164 whose sender is a tenant number registered with that scope.
CREATE TABLE scoped_suppressions (
    tenant_id  text NOT NULL,
    phone_e164 text NOT NULL,
    scope      text NOT NULL,
    reason     text NOT NULL,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, phone_e164, scope)
);

-- Every inbound message mapped to a tenant, once (event_id): the conversation's inbound side
-- and the guard that makes a redelivered STOP/START change consent only once.
CREATE TABLE inbound_messages (
    event_id      uuid PRIMARY KEY,
    tenant_id     text NOT NULL,
    phone_e164    text NOT NULL,
    recipient     text NOT NULL,
    scope         text,
    body          text NOT NULL,
    keyword_group text,                       -- stop, start, help or NULL (forwarded)
    received_at   timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_messages_conversation ON inbound_messages (tenant_id, phone_e164, received_at DESC);
