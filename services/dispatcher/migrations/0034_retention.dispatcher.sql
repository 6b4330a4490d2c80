-- replaces: 0034_retention.sql
CREATE INDEX IF NOT EXISTS dispatch_claims_final ON dispatch_claims (updated_at)
    WHERE state IN ('submitted', 'failed', 'expired');
-- Finished claims whose text is still there (the dispatcher redacts it after a grace period).
CREATE INDEX IF NOT EXISTS dispatch_claims_unredacted ON dispatch_claims (updated_at)
    WHERE state IN ('submitted', 'failed', 'expired') AND NOT outbound ? 'body_redacted';
