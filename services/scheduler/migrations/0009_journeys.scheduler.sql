-- replaces: 0009_journeys.sql
-- Journeys (docs/journeys.md). ingest writes the definitions; the scheduler keeps each
-- contact's run and advances it (lane on contact-events.accepted.v1, durable timer).

-- One contact's pass through one journey. run_id = uuid5(journey, trigger event id), so a
-- redelivered trigger enrols once. The timer takes active rows with due_at <= now (FOR UPDATE
-- SKIP LOCKED); the lane locks a contact's active rows (FOR UPDATE) to exit or wake them.
CREATE TABLE journey_runs (
    run_id      uuid PRIMARY KEY,
    tenant_id   text NOT NULL,
    journey_id  uuid NOT NULL,
    version     integer NOT NULL,
    phone_e164  text NOT NULL,
    contact_id  uuid,
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'completed', 'exited')),
    step        integer NOT NULL DEFAULT 0,     -- index of the current step
    step_since  timestamptz NOT NULL,           -- when the run reached it
    armed       boolean NOT NULL DEFAULT false, -- the current wait step is waiting
    due_at      timestamptz,                    -- when the timer looks at it again (NULL: never)
    trigger     jsonb NOT NULL,                 -- the event that started it
    last_event  jsonb,                          -- the event a wait_for_event step got
    seen        jsonb NOT NULL DEFAULT '[]',    -- events since entry that branches and waits ask about
    sends       integer NOT NULL DEFAULT 0,
    exit_reason text,
    entered_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    FOREIGN KEY (journey_id, version) REFERENCES journey_versions (journey_id, version)
);
CREATE INDEX journey_runs_due ON journey_runs (due_at) WHERE state = 'active';
CREATE INDEX journey_runs_contact ON journey_runs (tenant_id, phone_e164) WHERE state = 'active';
CREATE INDEX journey_runs_entries ON journey_runs (journey_id, phone_e164, entered_at DESC);
