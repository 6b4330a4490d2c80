-- Sender registry (shared/senders.py, docs/senders.md): each tenant's numbers (long codes,
-- toll-free, short codes) and alphanumeric sender ids. A message may name as its sender only
-- one of its tenant's verified senders; replies, STOP and HELP reach the tenant that owns the
-- number they were sent to. One source of truth: tenant_numbers becomes a view of it.
CREATE TABLE senders (
    sender        text NOT NULL,               -- +E.164 number, short code digits, or an alphanumeric id
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id),
    kind          text NOT NULL CHECK (kind IN ('long_code', 'toll_free', 'short_code', 'alphanumeric')),
    countries     text[] CHECK (array_position(countries, NULL) IS NULL),  -- destinations; NULL: any the rules allow
    capabilities  text[] NOT NULL DEFAULT '{sms}' CHECK (capabilities <@ ARRAY['sms', 'mo']::text[]),
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'verified', 'suspended')),
    scope         text,                        -- replies: a STOP to this sender opts out of this scope only
    registrations jsonb NOT NULL DEFAULT '{}', -- ten_dlc, toll_free_verification, dlt: their ids
    note          text,                        -- the operator's reason for the last state change
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sender)
);
CREATE INDEX senders_tenant ON senders (tenant_id, scope);
-- A number (or anything replies are sent to) has one owner; an alphanumeric id that takes no
-- replies may be held by several tenants, each verified for it by an operator.
CREATE UNIQUE INDEX senders_one_owner ON senders (sender) WHERE kind <> 'alphanumeric' OR 'mo' = ANY (capabilities);

-- Every number replies were mapped to keeps working: verified, sends and receives.
INSERT INTO senders (sender, tenant_id, kind, capabilities, state, scope, created_at)
SELECT number, tenant_id,
       CASE WHEN number ~ '^[0-9]{3,8}$' THEN 'short_code'
            WHEN number ~ '^\+?[0-9]+$' THEN 'long_code'
            ELSE 'alphanumeric' END,
       '{sms,mo}', 'verified', scope, created_at
  FROM tenant_numbers;
DROP TABLE tenant_numbers;

-- Where replies go (ingest replies, scheduler scoped opt-outs): senders that take replies,
-- once an operator has verified them (a pending request never captures another's replies;
-- a suspended sender still hears STOP).
CREATE VIEW tenant_numbers AS
SELECT sender AS number, tenant_id, scope, created_at
  FROM senders
 WHERE 'mo' = ANY (capabilities) AND state <> 'pending';

-- ingest reads a tenant's senders with its API keys (shared/auth.py): a change to one drops the
-- tenant's cached keys on every instance, as a change to the tenant does (0018).
CREATE FUNCTION herald_notify_sender() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('herald_api_keys', 'tenant:' || OLD.tenant_id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('herald_api_keys', 'tenant:' || NEW.tenant_id);
        RETURN NEW;
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER senders_notify AFTER INSERT OR UPDATE OR DELETE ON senders
    FOR EACH ROW EXECUTE FUNCTION herald_notify_sender();
