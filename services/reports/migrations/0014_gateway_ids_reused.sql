-- reports: gateways reuse their message ids (an SMSC restarting its counter, or wrapping it).
-- gateway_refs keeps every submission of an id, with when it was submitted, instead of the
-- first one only; a receipt goes to the most recent submission of its id within the matching
-- window (services/reports/repository.py, docs/results.md "Receipts and reused gateway ids").
ALTER TABLE gateway_refs ADD COLUMN submitted_at timestamptz;
UPDATE gateway_refs g SET submitted_at = m.submitted_at
  FROM messages m WHERE m.message_id = g.message_id AND m.submitted_at IS NOT NULL;
UPDATE gateway_refs SET submitted_at = now() WHERE submitted_at IS NULL;
ALTER TABLE gateway_refs ALTER COLUMN submitted_at SET DEFAULT now();
ALTER TABLE gateway_refs ALTER COLUMN submitted_at SET NOT NULL;
ALTER TABLE gateway_refs DROP CONSTRAINT gateway_refs_pkey;
ALTER TABLE gateway_refs ADD PRIMARY KEY (gateway, gateway_message_id, message_id);

-- when the gateway reported the receipt (the event's time), to place it among the submissions
ALTER TABLE pending_receipts ADD COLUMN occurred_at timestamptz;
CREATE INDEX pending_receipts_received ON pending_receipts (received_at);
