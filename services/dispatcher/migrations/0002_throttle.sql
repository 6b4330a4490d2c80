-- dispatcher: token buckets shared by every dispatcher instance, so a gateway's limit
-- holds however many instances run. One row per gateway; tokens are segments.
CREATE TABLE throttle_buckets (
    gateway    text PRIMARY KEY,
    rate       double precision NOT NULL,  -- tokens per second
    capacity   double precision NOT NULL,
    tokens     double precision NOT NULL,  -- may go negative: reserved ahead
    updated_at timestamptz NOT NULL
);
