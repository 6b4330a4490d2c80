-- A shared view (docs/data-map.md, "Shared views"; the rule in 0046_shared_views.sql of ingest).
-- The dispatcher's finished claims, for reports: past its parking cap, an unmatched receipt whose
-- gateway id the dispatcher submitted is kept (reports is behind on its status events) rather than
-- dropped as one of a gateway's receipts for messages Herald never sent. Evidence only: the receipt
-- is matched to its submission from reports' own records, never from this view.
CREATE VIEW shared_submissions AS
SELECT state, gateway, gateway_message_id, gateway_part_ids, updated_at
  FROM dispatch_claims;

-- reports' look-up by a receipt's gateway id: the message's id, or one of a concatenated message's
-- parts' ids (only messages of several parts are in the parts' index)
CREATE INDEX IF NOT EXISTS dispatch_claims_gateway_ref ON dispatch_claims (gateway, gateway_message_id)
    WHERE gateway_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dispatch_claims_gateway_parts ON dispatch_claims USING gin (gateway_part_ids)
    WHERE cardinality(gateway_part_ids) > 1;
