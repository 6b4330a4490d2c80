-- dispatcher: every submission attempt is recorded on its claim before it is sent, so the
-- reconciler asks each gateway that may have the message (not the one health prefers now);
-- claimed_at dates the claim for the "oldest open claim" gauge and alert.
-- NULL attempts: a claim taken before this migration, whose attempts are unknown.
ALTER TABLE dispatch_claims ADD COLUMN submit_attempts jsonb;
ALTER TABLE dispatch_claims ALTER COLUMN submit_attempts SET DEFAULT '[]'::jsonb;
ALTER TABLE dispatch_claims ADD COLUMN claimed_at timestamptz;
UPDATE dispatch_claims SET claimed_at = updated_at WHERE state = 'claimed';
ALTER TABLE dispatch_claims ALTER COLUMN claimed_at SET DEFAULT now();
CREATE INDEX dispatch_claims_open_age ON dispatch_claims (claimed_at) WHERE state = 'claimed';
