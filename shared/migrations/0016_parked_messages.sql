-- dispatcher: parked messages. Every gateway of a message's route refused it (retriably) for
-- longer than the retry budget; the message waits in its claim row, state 'parked', until its
-- route is healthy again, its validity ends or its maximum age passes (docs/providers.md).
ALTER TABLE dispatch_claims
    ADD COLUMN parked_at     timestamptz,                -- first parked (kept across resends)
    ADD COLUMN park_retry_at timestamptz,                -- next resend while parked
    ADD COLUMN park_rounds   integer NOT NULL DEFAULT 0; -- times parked (backoff)

-- Add 'parked' to the allowed states, keeping whatever other states the constraint allows.
DO $$
DECLARE
    def text;
BEGIN
    SELECT pg_get_constraintdef(oid) INTO def FROM pg_constraint
    WHERE conrelid = 'dispatch_claims'::regclass AND conname = 'dispatch_claims_state_check';
    IF def IS NOT NULL AND position('''parked''' IN def) = 0 THEN
        ALTER TABLE dispatch_claims DROP CONSTRAINT dispatch_claims_state_check;
        EXECUTE 'ALTER TABLE dispatch_claims ADD CONSTRAINT dispatch_claims_state_check '
            || replace(def, '''claimed''::text', '''claimed''::text, ''parked''::text');
    END IF;
END $$;

CREATE INDEX dispatch_claims_parked ON dispatch_claims (park_retry_at) WHERE state = 'parked';
