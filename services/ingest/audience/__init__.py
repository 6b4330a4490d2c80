"""ingest's audience: contacts, consent, segments and templates (docs/audience.md).

- ``contacts_api.build_audience_router``: the HTTP routes, mounted by ingest's ``create_app``;
- ``contacts_repo.AudienceRepository``: the SQL, also for campaigns (``iter_audience``) and
  the scheduler (``consent_states``);
- ``importer``: contact field checks and the streaming CSV / JSON importer;
- ``segments``: the filter language (parse → validated AST → parameterised SQL);
- ``templates``: the sandboxed renderer, language variants and opt-out texts.
"""

from services.ingest.audience.contacts_api import build_audience_router

__all__ = ["build_audience_router"]
