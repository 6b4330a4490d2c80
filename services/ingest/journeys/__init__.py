"""Journey definitions by API (docs/journeys.md): create, read, list, update (new version), archive.

The scheduler runs them (``services/scheduler/journeys``); this package only validates and
stores the JSON, tenant-scoped.
"""
