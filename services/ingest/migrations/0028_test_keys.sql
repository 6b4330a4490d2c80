-- Test keys (docs/providers.md, "Test keys"): their messages run through the whole pipeline
-- but go to the dispatcher's sandbox gateway, never to a carrier.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS test boolean NOT NULL DEFAULT false;
