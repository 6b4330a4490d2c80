-- ingest caches API keys in memory (shared/auth.py, KeyCache). Every change to a key or its
-- tenant is announced on the channel herald_api_keys, so each instance drops its copy at
-- commit time: a revoked, rotated or re-limited key, or a disabled tenant, takes effect at once.
-- Payload: the key id, or 'tenant:<tenant id>' for a tenant.
CREATE FUNCTION herald_notify_api_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('herald_api_keys', OLD.key_id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('herald_api_keys', NEW.key_id);
    RETURN NEW;
END $$;

CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION herald_notify_api_key();

CREATE FUNCTION herald_notify_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('herald_api_keys', 'tenant:' || OLD.tenant_id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('herald_api_keys', 'tenant:' || NEW.tenant_id);
    RETURN NEW;
END $$;

CREATE TRIGGER tenants_notify AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION herald_notify_tenant();
