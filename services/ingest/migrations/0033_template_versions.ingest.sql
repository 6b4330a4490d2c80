-- replaces: 0033_template_versions.sql
-- Templates are versioned and can be archived (docs/audience.md, "Templates").
--
-- ``templates`` keeps the current version's content (campaigns and journeys read it there);
-- every version, the first included, is kept in ``template_versions`` so a send can name one
-- and a message says which one it was rendered from. An archived template stays readable but
-- takes no new sends and no new campaigns.
ALTER TABLE templates ADD COLUMN version int NOT NULL DEFAULT 1;
ALTER TABLE templates ADD COLUMN archived_at timestamptz;

CREATE TABLE template_versions (
    tenant_id        text NOT NULL,
    template_id      uuid NOT NULL,
    version          int NOT NULL,
    name             text NOT NULL,
    purpose          text NOT NULL CHECK (purpose IN ('marketing', 'transactional')),
    sender           text,
    default_language text NOT NULL,
    variants         jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, template_id, version),
    FOREIGN KEY (tenant_id, template_id) REFERENCES templates (tenant_id, template_id)
);

INSERT INTO template_versions (tenant_id, template_id, version, name, purpose, sender, default_language, variants, created_at)
SELECT tenant_id, template_id, version, name, purpose, sender, default_language, variants, updated_at FROM templates;
