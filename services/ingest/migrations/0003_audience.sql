-- ingest (audience): contacts, consent, erased numbers, segments and templates.
-- docs/audience.md explains the model; campaigns and the scheduler read these tables.

-- Lets one GIN index lead with tenant_id, so a tag or attribute lookup stays inside the tenant.
-- Trusted extension (PostgreSQL 13+): the database owner may create it.
CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE TABLE contacts (
    tenant_id             text NOT NULL REFERENCES tenants (tenant_id),
    contact_id            uuid NOT NULL DEFAULT gen_random_uuid(),
    phone_e164            text NOT NULL,
    first_name            text,
    last_name             text,
    attributes            jsonb NOT NULL DEFAULT '{}',   -- flat: string, number, bool, date (ISO string)
    tags                  text[] NOT NULL DEFAULT '{}',
    language              text,                          -- BCP-47 short: "es", "pt-BR"
    country               text NOT NULL,                 -- ISO 3166-1 alpha-2, derived from the number if not given
    time_zone             text,                          -- IANA name
    last_activity_at      timestamptz,
    -- Current consent per purpose (NULL = never recorded), kept in step with the newest row
    -- of contact_consents in the same transaction, so segments and the scheduler read one row.
    consent_marketing        boolean,
    consent_marketing_at     timestamptz,
    consent_transactional    boolean,
    consent_transactional_at timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, contact_id),                 -- keyset paging and audience streaming
    UNIQUE (tenant_id, phone_e164)                       -- upsert by phone; scheduler look-ups
);
CREATE INDEX contacts_tags ON contacts USING gin (tenant_id, tags);
CREATE INDEX contacts_attributes ON contacts USING gin (tenant_id, attributes jsonb_path_ops);
CREATE INDEX contacts_country ON contacts (tenant_id, country);
CREATE INDEX contacts_language ON contacts (tenant_id, language);
CREATE INDEX contacts_last_activity ON contacts (tenant_id, last_activity_at);
CREATE INDEX contacts_marketing_consent ON contacts (tenant_id, contact_id) WHERE consent_marketing;  -- "consent.marketing"

-- Consent history: append-only, one row per grant or revocation, with its proof.
CREATE TABLE contact_consents (
    consent_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL,
    contact_id  uuid NOT NULL,
    purpose     text NOT NULL CHECK (purpose IN ('marketing', 'transactional')),
    granted     boolean NOT NULL,
    source      text NOT NULL,                 -- web_form, sms_keyword, import, api, ...
    occurred_at timestamptz NOT NULL,          -- when the person gave or withdrew it
    recorded_at timestamptz NOT NULL DEFAULT now(),
    proof       jsonb NOT NULL DEFAULT '{}',   -- form_id, ip, text_shown, user_agent
    FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, contact_id) ON DELETE CASCADE
);
CREATE INDEX contact_consents_contact ON contact_consents (tenant_id, contact_id, consent_id DESC);

-- Erased contacts: no personal data, only a hash of the number, so a number that was erased
-- (and maybe opted out) never gets marketing again. phone_hash is
-- hex(sha256('herald-erasure-v1:' || tenant_id || ':' || phone_e164)), computable in SQL too.
CREATE TABLE suppression_hashes (
    tenant_id  text NOT NULL,
    phone_hash text NOT NULL,
    reason     text NOT NULL,
    source     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, phone_hash)
);

-- Named segments: a campaign references one by id; the filter is re-validated on every use.
CREATE TABLE segments (
    tenant_id  text NOT NULL REFERENCES tenants (tenant_id),
    segment_id uuid NOT NULL DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    filter     text NOT NULL,          -- as written
    normalized text NOT NULL,          -- canonical form (bare attribute names spelt attributes.x)
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, segment_id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE templates (
    tenant_id        text NOT NULL REFERENCES tenants (tenant_id),
    template_id      uuid NOT NULL DEFAULT gen_random_uuid(),
    name             text NOT NULL,
    purpose          text NOT NULL CHECK (purpose IN ('marketing', 'transactional')),
    sender           text,
    default_language text NOT NULL,
    variants         jsonb NOT NULL,   -- {"en": "Hi {{first_name|there}}", "es": "Hola {{first_name|}}"}
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, template_id),
    UNIQUE (tenant_id, name)
);

-- Segment helpers: an attribute as a timestamp or a number, NULL when it is not one.
-- Writers store dates only as 'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00' (checked
-- before writing), so the casts below never fail.
CREATE FUNCTION audience_ts(v jsonb) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) <> 'string' THEN NULL
        WHEN (v #>> '{}') ~ '^\d{4}-\d{2}-\d{2}$' THEN ((v #>> '{}') || 'T00:00:00+00:00')::timestamptz
        WHEN (v #>> '{}') ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?\+00:00$' THEN (v #>> '{}')::timestamptz
    END
$$;

CREATE FUNCTION audience_num(v jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'number' THEN (v #>> '{}')::numeric END
$$;
