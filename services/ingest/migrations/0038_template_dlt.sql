-- India DLT (docs/senders.md, registrations): the content template id a template is registered
-- under. A message sent by template to a destination whose rules require DLT carries it to the
-- carrier with its sender's entity id (carrier_ids dlt_template_id; SMPP registration_tlvs).
ALTER TABLE templates ADD COLUMN dlt_template_id text CHECK (length(dlt_template_id) BETWEEN 1 AND 64);
ALTER TABLE template_versions ADD COLUMN dlt_template_id text CHECK (length(dlt_template_id) BETWEEN 1 AND 64);
