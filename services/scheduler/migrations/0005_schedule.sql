-- scheduler: messages held until a time (send_at, quiet hours). Durable timers: any
-- scheduler instance releases due rows with FOR UPDATE SKIP LOCKED, so none is released
-- twice and a restart loses nothing.
CREATE TABLE scheduled_messages (
    message_id  uuid PRIMARY KEY,
    tenant_id   text NOT NULL,
    due_at      timestamptz NOT NULL,
    accepted    jsonb NOT NULL,            -- the accepted message, decided again when due
    trace_id    text NOT NULL,
    reason_code text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scheduled_messages_due ON scheduled_messages (due_at);
