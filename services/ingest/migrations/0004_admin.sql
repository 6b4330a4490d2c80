-- ingest: per-key rate limits (sliding window over minute counters, shared by every
-- ingest instance), key expiry for rotation with overlap, and the admin audit trail.
ALTER TABLE api_keys
    ADD COLUMN expires_at      timestamptz,          -- set when a key is rotated: it keeps working until then
    ADD COLUMN requests_per_minute integer,           -- NULL: the service default
    ADD COLUMN messages_per_minute integer;

CREATE TABLE rate_counters (
    key_id       text NOT NULL,
    window_start timestamptz NOT NULL,               -- the minute
    requests     integer NOT NULL DEFAULT 0,
    messages     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, window_start)
);

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
