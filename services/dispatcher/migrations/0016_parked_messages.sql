-- dispatcher: parked messages. Every gateway of a message's route refused it (retriably) for
-- longer than the retry budget; the message waits in its claim row, state 'parked', until its
-- route is healthy again, its validity ends or its maximum age passes (docs/providers.md).
ALTER TABLE dispatch_claims
    ADD COLUMN parked_at     timestamptz,                -- first parked (kept across resends)
    ADD COLUMN park_retry_at timestamptz,                -- next resend while parked
    ADD COLUMN park_rounds   integer NOT NULL DEFAULT 0; -- times parked (backoff)

-- 'parked' joins the states (0013 added 'unknown').
ALTER TABLE dispatch_claims DROP CONSTRAINT IF EXISTS dispatch_claims_state_check;
ALTER TABLE dispatch_claims ADD CONSTRAINT dispatch_claims_state_check
    CHECK (state IN ('claimed', 'parked', 'submitted', 'failed', 'expired', 'unknown'));

CREATE INDEX dispatch_claims_parked ON dispatch_claims (park_retry_at) WHERE state = 'parked';
