-- message_events (every message's timeline, several rows per message: the largest table) is
-- partitioned by day of occurred_at (UTC), so expiring a day is dropping its partition, never a
-- delete scan, and inserts only ever touch the indexes of a small, recent partition. reports'
-- retention job creates the partitions of the coming days and drops those past retention
-- (services/reports/retention.py, docs/operations.md "Retention").
--
-- A unique index of a partitioned table must hold the partition key: the primary key becomes
-- (event_id, occurred_at). An event delivered again carries the same occurred_at, so
-- ON CONFLICT (event_id, occurred_at) still writes it once. Rows whose day has no partition
-- (a gateway clock far off) land in message_events_default; the job moves them into their day's
-- partition when it creates it, and deletes them once past retention.
ALTER TABLE message_events RENAME TO message_events_unpartitioned;
ALTER INDEX message_events_pkey RENAME TO message_events_unpartitioned_pkey;
ALTER INDEX message_events_message RENAME TO message_events_unpartitioned_message;

CREATE TABLE message_events (
    event_id    uuid NOT NULL,
    message_id  uuid NOT NULL,
    status      text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    detail      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX message_events_message ON message_events (message_id, occurred_at);
CREATE TABLE message_events_default PARTITION OF message_events DEFAULT;

-- A partition per day that has rows, and for today and the next 7 days.
DO $$
DECLARE
    d date;
BEGIN
    FOR d IN
        SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date FROM message_events_unpartitioned
        UNION
        SELECT (now() AT TIME ZONE 'UTC')::date + i FROM generate_series(0, 7) AS i
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF message_events FOR VALUES FROM (%L) TO (%L)',
            'message_events_p' || to_char(d, 'YYYYMMDD'),
            (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
    END LOOP;
END $$;

INSERT INTO message_events (event_id, message_id, status, occurred_at, recorded_at, detail)
SELECT event_id, message_id, status, occurred_at, recorded_at, detail FROM message_events_unpartitioned;
DROP TABLE message_events_unpartitioned;
