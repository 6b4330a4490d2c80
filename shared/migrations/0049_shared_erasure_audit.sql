-- A shared view (docs/data-map.md, "Shared views"; the rule in 0046_shared_views.sql of ingest).
-- Every service's erasure audit rows, for ingest's GET /v1/erasures/{id}.
CREATE VIEW shared_erasure_audit AS
SELECT erasure_id, service, tenant_id, phone_hash, requested_by, requested_at, applied_at, counts
  FROM erasure_audit;
