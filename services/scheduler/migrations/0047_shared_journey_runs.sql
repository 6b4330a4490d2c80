-- A shared view (docs/data-map.md, "Shared views"; the rule in 0046_shared_views.sql of ingest).
-- The scheduler's journey runs, for ingest's journey counts (no number, no contact, no events).
CREATE VIEW shared_journey_runs AS
SELECT tenant_id, journey_id, state, sends
  FROM journey_runs;
