-- replaces: 0009_journeys.sql
-- Journeys (docs/journeys.md). ingest writes the definitions; the scheduler keeps each
-- contact's run and advances it (lane on contact-events.accepted.v1, durable timer).

CREATE TABLE journeys (
    tenant_id      text NOT NULL REFERENCES tenants (tenant_id),
    journey_id     uuid NOT NULL DEFAULT gen_random_uuid(),
    name           text NOT NULL,
    version        integer NOT NULL DEFAULT 1,      -- the version new runs start on
    trigger_events text[] NOT NULL,                 -- names that start it (the lane's look-up)
    state          text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'archived')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    archived_at    timestamptz,
    PRIMARY KEY (tenant_id, journey_id),
    UNIQUE (journey_id)
);
CREATE INDEX journeys_tenant_state ON journeys (tenant_id, state);

-- Every version is kept: a run finishes on the version it started on.
CREATE TABLE journey_versions (
    journey_id uuid NOT NULL REFERENCES journeys (journey_id),
    version    integer NOT NULL,
    definition jsonb NOT NULL,            -- as written (validated by shared.journeys.definition)
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journey_id, version)
);
