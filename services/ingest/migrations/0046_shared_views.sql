-- Shared views: the only way a service reads another service's tables (docs/data-map.md,
-- "Shared views"). Each is published by the owner of the tables it reads, holds exactly the
-- columns its readers use and nothing else, and is a plain projection (no aggregate, no
-- DISTINCT): PostgreSQL inlines it into the reader's query, so the base tables' indexes serve it
-- as before. They hold no data of their own: retention and erasure of the base rows apply.

-- ingest's campaigns: the state the dispatcher holds queued messages by, and the scheduler its
-- held ones (with the campaign's caps and why it was cancelled; updated_at finds resumed ones).
CREATE VIEW shared_campaign_states AS
SELECT campaign_id, tenant_id, state, frequency_caps, cancel_reason, updated_at
  FROM campaigns;

-- ingest's campaigns, as reports' campaign report and A/B winner read them (never test_numbers).
CREATE VIEW shared_campaign_reports AS
SELECT campaign_id, tenant_id, name, state, phase, variants, ab_test, decide_at, winner, winner_detail,
       published, launched_at
  FROM campaigns;

-- ingest's tenants: disabled tenants (dispatcher, scheduler, reports' key check), retention ages
-- (every service's retention job), consent policy and caps (scheduler), countries (key check),
-- reply webhook URL (reports).
CREATE VIEW shared_tenant_settings AS
SELECT tenant_id, disabled_at, retention, marketing_consent, frequency_caps, country, allowed_countries,
       reply_webhook_url
  FROM tenants;

-- ingest's API keys, as shared/auth.py checks them (reports' API).
CREATE VIEW shared_api_keys AS
SELECT key_id, tenant_id, secret_hash, scopes, revoked_at, expires_at, requests_per_minute, messages_per_minute,
       test
  FROM api_keys;

-- ingest's API keys' limits only (a journey sends under its key's limits): no secret hash.
CREATE VIEW shared_key_limits AS
SELECT key_id, tenant_id, requests_per_minute, messages_per_minute
  FROM api_keys;

-- ingest's sender registry and pools, carried with a key (shared/auth.py).
CREATE VIEW shared_senders AS
SELECT sender, tenant_id, kind, state, countries, capabilities, registrations, rate_per_s, burst
  FROM senders;

CREATE VIEW shared_sender_pools AS
SELECT tenant_id, name, senders, geo_match
  FROM sender_pools;

-- ingest's audience, as the scheduler decides held messages and journeys render and branch.
CREATE VIEW shared_contacts AS
SELECT tenant_id, phone_e164, contact_id, first_name, last_name, attributes, tags, language, country, time_zone,
       last_activity_at, consent_marketing, consent_transactional
  FROM contacts;

CREATE VIEW shared_suppressions AS
SELECT tenant_id, phone_e164, reason
  FROM suppressions;

CREATE VIEW shared_scoped_suppressions AS
SELECT tenant_id, phone_e164, scope, reason
  FROM scoped_suppressions;

CREATE VIEW shared_suppression_hashes AS
SELECT tenant_id, phone_hash, reason
  FROM suppression_hashes;

-- The numbers replies come to (senders that take them, 0037), by scope.
CREATE VIEW shared_tenant_numbers AS
SELECT number, tenant_id, scope
  FROM tenant_numbers;

-- ingest's journeys and templates, as the scheduler runs them.
CREATE VIEW shared_journeys AS
SELECT journey_id, tenant_id, version, state, trigger_events, key_id
  FROM journeys;

CREATE VIEW shared_journey_versions AS
SELECT journey_id, version, definition
  FROM journey_versions;

CREATE VIEW shared_templates AS
SELECT tenant_id, template_id, purpose, sender, default_language, variants
  FROM templates;
