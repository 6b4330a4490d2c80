-- Subject-access export: everything Herald holds about one number (docs/data-map.md).
--
-- subject_access_exports (ingest): one row per export, the audit of who asked (API key id) and
-- when. The number stays on the row while the export lives; when it expires
-- (HERALD_SUBJECT_ACCESS_EXPORT_DAYS) or the number is erased, the number and the parts go and
-- the row stays as the audit.
CREATE TABLE subject_access_exports (
    export_id    uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    phone_e164   text,                          -- NULL once expired or erased
    contact_id   uuid,
    phone_hash   text,                          -- keyed hash (as in erasure_audit) when an erasure key is set
    requested_by text NOT NULL,                 -- API key id
    requested_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    completed_at timestamptz,
    removed_at   timestamptz,                   -- when the number and parts went
    removed_why  text                           -- expired | erased
);
CREATE INDEX subject_access_exports_tenant ON subject_access_exports (tenant_id, requested_at);
CREATE INDEX subject_access_exports_live ON subject_access_exports (expires_at) WHERE phone_e164 IS NOT NULL;
CREATE INDEX subject_access_exports_phone ON subject_access_exports (tenant_id, phone_e164) WHERE phone_e164 IS NOT NULL;

-- subject_access_parts (ingest): what each service published about the number, by chunk. The
-- primary key makes a redelivered chunk a no-op; a service that gathered twice (a redelivered
-- request) has two attempts, and the document uses its first complete one.
CREATE TABLE subject_access_parts (
    export_id   uuid NOT NULL REFERENCES subject_access_exports ON DELETE CASCADE,
    service     text NOT NULL,
    attempt     uuid NOT NULL,
    chunk       integer NOT NULL,
    chunks      integer NOT NULL,
    tables      jsonb NOT NULL,                -- {"table": [rows]}
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (export_id, service, attempt, chunk)
);
