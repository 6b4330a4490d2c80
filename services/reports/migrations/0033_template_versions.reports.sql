-- replaces: 0033_template_versions.sql
-- reports: the template (and its version) a message was rendered from, when it was sent by template.
ALTER TABLE messages ADD COLUMN template_id uuid;
ALTER TABLE messages ADD COLUMN template_version int;
