-- Short links are no longer an open redirect on the shared domain (docs/results.md, "Link safety"):
-- a link answers only once its message was submitted to a gateway, until it expires, on the
-- domain it was minted for, and an operator can take it down.

-- When ingest's links lane saw the message submitted (messages.status.v1); NULL: not yet, and
-- the redirect answers 404. Links minted before this migration were live: they count as
-- activated now (the value is computed once, for the rows already there; no table rewrite).
ALTER TABLE links ADD COLUMN activated_at timestamptz DEFAULT now();
ALTER TABLE links ALTER COLUMN activated_at DROP DEFAULT;
-- After it the redirect answers 410 link_expired. Set when the link is minted (acceptance plus the
-- tenant's link_ttl_s, else HERALD_LINK_TTL_S); the rows already there get 90 days from now.
ALTER TABLE links ADD COLUMN expires_at timestamptz NOT NULL DEFAULT now() + interval '90 days';
-- The tenant's own link domain the link was minted on; NULL: the shared domain (HERALD_LINK_DOMAIN).
-- A link with a domain answers only requests whose Host is that domain.
ALTER TABLE links ADD COLUMN domain text;
-- Operator takedown (herald admin link takedown): the redirect answers 410 link_taken_down.
ALTER TABLE links ADD COLUMN taken_down_at timestamptz;
ALTER TABLE links ADD COLUMN taken_down_by text;
ALTER TABLE links ADD COLUMN takedown_reason text;

-- A tenant's own short-link domain (NULL: the shared one) and how long its links live (NULL: the
-- service default). No two tenants share a domain.
ALTER TABLE tenants ADD COLUMN link_domain text;
ALTER TABLE tenants ADD COLUMN link_ttl_s integer CHECK (link_ttl_s BETWEEN 60 AND 3650 * 86400);
CREATE UNIQUE INDEX tenants_link_domain ON tenants (lower(link_domain)) WHERE link_domain IS NOT NULL;

-- Each ingest instance looks for new takedowns every few seconds (drops them from its cache).
CREATE INDEX links_taken_down ON links (taken_down_at) WHERE taken_down_at IS NOT NULL;
