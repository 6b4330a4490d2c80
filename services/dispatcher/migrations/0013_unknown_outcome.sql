-- dispatcher: a claim may end 'unknown' (the gateway may or may not have the message and
-- cannot be asked; it is not resent). Reported as the message status 'unknown'.
ALTER TABLE dispatch_claims DROP CONSTRAINT IF EXISTS dispatch_claims_state_check;
ALTER TABLE dispatch_claims ADD CONSTRAINT dispatch_claims_state_check
    CHECK (state IN ('claimed', 'submitted', 'failed', 'expired', 'unknown'));
