-- replaces: 0034_retention.sql
-- One row per retention job (service): a lease, so any instance may run it but only one at a
-- time and once per period, and what the last successful run did (read by every instance for
-- herald_retention_last_success_timestamp_seconds).
CREATE TABLE IF NOT EXISTS retention_runs (
    job             text PRIMARY KEY,
    owner           text,
    lease_until     timestamptz,
    started_at      timestamptz,
    last_success_at timestamptz,
    last_duration_s double precision,
    last_counts     jsonb NOT NULL DEFAULT '{}'
);
