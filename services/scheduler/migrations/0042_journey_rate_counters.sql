-- scheduler: journey sends count against the message limit of the key that wrote the journey
-- (docs/journeys.md) on counters of the scheduler's own: one row per key and minute, like ingest's
-- rate_counters (which count the API's requests and messages), a sliding window over two minutes.
-- Rows older than five minutes are never read again and are swept.
CREATE TABLE IF NOT EXISTS journey_rate_counters (
    key_id       text NOT NULL,
    window_start timestamptz NOT NULL,               -- the minute
    messages     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, window_start)
);
