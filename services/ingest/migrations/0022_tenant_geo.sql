-- Geo permissions (shared/geo.py): the tenant's own country and the destination countries it
-- may send to (ISO 3166-1 alpha-2). Both nullable: allowed_countries set → only those; else
-- country set → only that one; neither (tenants created before) → HERALD_GEO_DEFAULT decides.
-- An UPDATE of tenants already notifies the API key cache (0018), which carries both columns.
ALTER TABLE tenants
    ADD COLUMN country text CHECK (country ~ '^[A-Z]{2}$'),
    ADD COLUMN allowed_countries text[] CHECK (array_position(allowed_countries, NULL) IS NULL);
