"""ingest's audience: contacts, consent, segments and templates (docs/audience.md).

- ``contacts_api.router``: the HTTP routes, mounted by ingest's ``create_app``;
- ``contacts_repo.AudienceRepository``: the SQL, also for campaigns (``iter_audience``);
- ``importer``: contact field checks and the streaming CSV / JSON importer;
- ``segments``: the filter language (parse → validated AST → parameterised SQL);
- ``templates``: the sandboxed renderer, language variants and opt-out texts.
"""
