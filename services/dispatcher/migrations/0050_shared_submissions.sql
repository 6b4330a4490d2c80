-- A shared view (docs/data-map.md, "Shared views"; the rule in 0046_shared_views.sql of ingest).
-- The dispatcher's claims, for reports: a receipt consumed before the status event carrying its
-- gateway id finds its submission here (updated_at: when the claim was finished, i.e. submitted).
CREATE VIEW shared_submissions AS
SELECT message_id, tenant_id, state, gateway, gateway_message_id, gateway_part_ids, updated_at
  FROM dispatch_claims;

-- reports' look-up by the receipt's gateway id: the message's id, or one of its parts' ids
CREATE INDEX IF NOT EXISTS dispatch_claims_gateway_ref ON dispatch_claims (gateway, gateway_message_id)
    WHERE gateway_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dispatch_claims_gateway_parts ON dispatch_claims USING gin (gateway_part_ids)
    WHERE gateway_part_ids IS NOT NULL;
