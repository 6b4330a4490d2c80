-- replaces: 0001_init.sql
-- Herald's first schema. Each table names the service that writes it.

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
